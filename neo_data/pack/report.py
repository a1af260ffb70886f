"""The pack job's report: the dataset's index (written last, the commit point), the table
printed at the end of a run (and by ``neo shards stats``), and the check that every input row
was packed or dropped with a reason."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from neo_data.encoding.tokens import load_tokenizer
from neo_data.format.schema import PACKED_SCHEMA_NAME, PACKED_SCHEMA_VERSION
from neo_data.manifest import Manifest


def make_report(
    manifest: Manifest, mhash: str, windows: list[dict], seconds: float
) -> dict[str, Any]:
    """The dataset's ``index.json`` from every window's result: buckets, totals (with the
    dropped rows by reason), tokenizer, timing and the shard list, in bucket order."""
    pack = manifest.resolved_pack()
    tok = load_tokenizer(pack.tokenizer)
    shards = [s for w in windows for s in w["shards"]]
    shards.sort(key=lambda s: ([b.name for b in pack.buckets].index(s["bucket"]), s["path"]))
    units = [u for w in windows for u in w["units"]]
    dropped: Counter = Counter()
    for u in units:
        dropped.update(u["dropped"])
    text_surplus = sum(w["text_over_ratio"] for w in windows)
    if text_surplus:
        dropped["text_over_ratio"] += text_surplus
    buckets = []
    for b in pack.buckets:
        mine = [s for s in shards if s["bucket"] == b.name]
        buckets.append(
            {
                "name": b.name,
                "max_image_tokens": b.max_image_tokens,
                **{
                    k: sum(s[k] for s in mine)
                    for k in ("packs", "samples", "text_samples", "tokens", "image_tokens", "bytes")
                },
                "shards": len(mine),
            }
        )
    totals = {
        k: sum(s[k] for s in shards)
        for k in (
            "packs",
            "samples",
            "text_samples",
            "tokens",
            "image_tokens",
            "supervised_tokens",
            "images",
            "bytes",
        )
    }
    totals["samples_in"] = sum(u["rows_in"] for u in units)
    totals["dropped"] = dict(sorted(dropped.items()))
    totals["fill"] = totals["tokens"] / (totals["packs"] * pack.seq_len) if totals["packs"] else 0.0
    return {
        "format": PACKED_SCHEMA_NAME,
        "schema_version": PACKED_SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "manifest": {"name": manifest.name, "stage": manifest.stage, "sha256": mhash},
        "tokenizer": {
            "spec": pack.tokenizer,
            "fingerprint": tok.fingerprint(),
            "vocab_size": tok.vocab_size,
        },
        "seq_len": pack.seq_len,
        "max_image_tokens": pack.max_image_tokens,
        "pixels": {"min": pack.min_pixels, "max": pack.max_pixels},
        "image_encoding": pack.image_encoding.model_dump(),
        "buckets": buckets,
        "totals": totals,
        "timing": {
            "seconds": round(seconds, 3),
            "windows": len(windows),
            "worker_encode_seconds": round(sum(w["encode_seconds"] for w in windows), 3),
            "worker_seconds": round(sum(w["seconds"] for w in windows), 3),
        },
        "shards": shards,
    }


def format_report(index: dict) -> str:
    """The table printed at the end of a pack job (and by ``neo shards stats``)."""
    t = index["totals"]
    lines = [
        f"packed dataset {index['manifest']['name']} ({index['manifest']['stage']}), seq_len {index['seq_len']}"
    ]
    lines.append(f"  samples in        {t['samples_in']:>10,}")
    for reason, n in t["dropped"].items():
        lines.append(f"  dropped {reason:<24}{n:>10,}")
    mm = t["samples"] - t["text_samples"]
    lines.append(
        f"  samples packed    {t['samples']:>10,}  (multimodal {mm:,}, text-only {t['text_samples']:,})"
    )
    text_ratio = t["text_samples"] / t["samples"] if t["samples"] else 0.0
    lines.append(f"  text ratio        {text_ratio:>10.3f}  (of packed samples)")
    lines.append(f"  packs             {t['packs']:>10,}")
    lines.append(
        f"  tokens            {t['tokens']:>10,}  (image {t['image_tokens']:,}, supervised {t['supervised_tokens']:,})"
    )
    lines.append(f"  fill              {t['fill']:>10.4f}")
    lines.append(f"  bytes             {t['bytes']:>10,}")
    lines.append("")
    lines.append(
        f"  {'bucket':<10}{'max img tok':>12}{'shards':>8}{'packs':>8}{'samples':>9}{'text':>7}{'fill':>8}"
    )
    for b in index["buckets"]:
        fill = b["tokens"] / (b["packs"] * index["seq_len"]) if b["packs"] else 0.0
        lines.append(
            f"  {b['name']:<10}{b['max_image_tokens']:>12,}{b['shards']:>8}{b['packs']:>8}{b['samples']:>9}{b['text_samples']:>7}{fill:>8.4f}"
        )
    return "\n".join(lines)


def verify_report(index: dict) -> None:
    """Every input row is packed or dropped with a reason (raise if not)."""
    t = index["totals"]
    accounted = t["samples"] + sum(t["dropped"].values())
    if accounted != t["samples_in"]:
        raise RuntimeError(f"{t['samples_in']} samples in but {accounted} packed or dropped")
