"""The pack job's report: the dataset's index (written last, the commit point), the table
printed at the end of a run (and by ``neo shards stats``), and the checks that every input row
was packed or dropped with a reason: from the windows' counts (:func:`verify_report`) and
recounted from the output files themselves (:func:`recount`), which markers cannot fake."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from neo_data.encoding.tokens import load_tokenizer
from neo_data.format.schema import PACKED_SCHEMA_NAME, PACKED_SCHEMA_VERSION
from neo_data.manifest import Manifest


def make_report(
    manifest: Manifest, mhash: str, windows: list[dict], seconds: float, inputs: dict
) -> dict[str, Any]:
    """The dataset's ``index.json`` from every window's result: buckets, totals (with the
    dropped rows by reason), tokenizer, timing and the shard list, in bucket order. ``inputs``
    (:func:`neo_data.pack.resume.inputs_record`) gives ``samples_in`` -- the rows planned, not
    the rows the windows say they read -- and is kept for the rerun check."""
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
    totals["samples_in"] = inputs["rows"]
    totals["dropped"] = dict(sorted(dropped.items()))
    totals["fill"] = totals["tokens"] / (totals["packs"] * pack.seq_len) if totals["packs"] else 0.0
    return {
        "format": PACKED_SCHEMA_NAME,
        "schema_version": PACKED_SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "manifest": {"name": manifest.name, "stage": manifest.stage, "sha256": mhash},
        "inputs": inputs,
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


def recount(
    packed: pa.ChunkedArray | pa.Array,
    rejected: pa.ChunkedArray | pa.Array,
    samples_in: int,
    inputs: pa.ChunkedArray | pa.Array | None = None,
) -> list[str]:
    """Problems found recounting a dataset from its files: ``packed`` (every sample id in the
    shards), ``rejected`` (every sample id in ``rejected/``) against ``samples_in`` and, when the
    input is at hand, the multiset of input sample ids. No sample is packed twice; every input
    row is packed or rejected exactly once."""
    problems = []
    twice = _repeated(packed)
    if twice:
        problems.append(f"{len(twice)} sample id(s) packed more than once, e.g. {twice[0]!r}")
    if len(packed) + len(rejected) != samples_in:
        problems.append(
            f"{samples_in} rows in, but the shards hold {len(packed)} samples and rejected/ "
            f"{len(rejected)} rows"
        )
    if inputs is not None and not _same_multiset(
        out_ids := pa.concat_arrays(_chunks(packed) + _chunks(rejected)),
        in_ids := pa.concat_arrays(_chunks(inputs)),
    ):  # (sorted in Arrow; the Python count below runs only to name a difference)
        out, want = Counter(out_ids.to_pylist()), Counter(in_ids.to_pylist())
        if out != want:
            lost = sorted((want - out).elements())
            extra = sorted((out - want).elements())
            if lost:
                problems.append(
                    f"{len(lost)} input row(s) neither packed nor rejected, e.g. {lost[0]!r}"
                )
            if extra:
                problems.append(
                    f"{len(extra)} row(s) packed or rejected more often than they are in the "
                    f"input, e.g. {extra[0]!r}"
                )
    return problems


def _same_multiset(a: pa.Array, b: pa.Array) -> bool:
    if len(a) != len(b):
        return False
    return a.take(pc.sort_indices(a)).equals(b.take(pc.sort_indices(b)))


def _chunks(a: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    chunks = a.chunks if isinstance(a, pa.ChunkedArray) else [a]
    return [c.cast(pa.string()) for c in chunks] or [pa.array([], pa.string())]


def _repeated(ids: pa.ChunkedArray | pa.Array) -> list[str]:
    if not len(ids):
        return []
    counts = pc.value_counts(pa.concat_arrays(_chunks(ids)))
    mask = pc.greater(counts.field("counts"), 1)
    return sorted(counts.field("values").filter(mask).to_pylist())
