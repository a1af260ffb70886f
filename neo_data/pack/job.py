"""The pack job: curated samples -> resolution-bucketed packed shards, on Ray Data.

The input's Parquet row groups are work units; consecutive units form **windows** of about
``pack.window_samples`` samples. One Ray Data task packs one window, start to finish:

1. **encode** every row (:class:`~neo_data.encoding.encode.SampleEncoder`: decode, smart resize, encode,
   tokenize, T/H/W); rejected rows go to ``rejected/<unit>.parquet`` with their reason;
2. **plan** (pure, deterministic for a seed): keep text-only samples at the manifest's ratio,
   spread them over the buckets, group each bucket's samples by first-fit decreasing, cut the
   packs into shards;
3. **write** the shards atomically, then ``_work/windows/<window>.json`` (the window's
   completion marker, holding its shard infos and counts).

Image bytes are read once and written once: no intermediate copy, no shuffle. Windows run in
parallel; a window's fill loss is at most one partial pack per bucket. A rerun after a crash
redoes only unfinished windows (their shards come out identical); the index is written last,
and a rerun after success finds it (same manifest hash) and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.encoding.encode import EncodeSettings, SampleEncoder, SampleRejected
from neo_data.encoding.tokens import load_tokenizer
from neo_data.format.schema import (
    CURATED_SCHEMA,
    INDEX_NAME,
    PACKED_SCHEMA_NAME,
    PACKED_SCHEMA_VERSION,
    REJECTED_SCHEMA,
    WORK_DIR,
    check_schema,
    rejected_name,
    shard_name,
)
from neo_data.format.shards import write_index, write_shard
from neo_data.format.storage import (
    atomic_write,
    claim_work_dir,
    join,
    table_to_parquet_bytes,
    url_to_fs,
)
from neo_data.manifest import Manifest, PackSpec
from neo_data.pack.packing import build_pack, choose_groups

log = logging.getLogger(__name__)

LENGTH_SCHEMA = pa.schema(
    [
        pa.field("unit_id", pa.string()),
        pa.field("row", pa.int32()),  # row within the unit
        pa.field("sample_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("text_only", pa.bool_()),
        pa.field("bucket", pa.string()),  # null for text-only samples (assigned when planning)
        pa.field("num_tokens", pa.int32()),
        pa.field("num_image_tokens", pa.int32()),
    ]
)


class OutputConflict(RuntimeError):
    """The output directory holds a dataset packed from a different manifest."""


# ---------------------------------------------------------------------------------------------
# Inputs and work units
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    unit_id: str
    file: str  # URL as given (local path or s3://...)
    row_group: int
    num_rows: int
    first_row: int  # row of the file where the unit starts


def list_inputs(patterns: list[str]) -> list[str]:
    """Expand files, directories (every ``*.parquet`` below) and globs into sorted URLs."""
    out: list[str] = []
    for pattern in patterns:
        fs, path = url_to_fs(pattern)
        proto = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
        if any(c in path for c in "*?["):
            found = fs.glob(path)
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if p.endswith(".parquet")]
        elif fs.exists(path):
            found = [path]
        else:
            raise FileNotFoundError(f"data.curated: {pattern!r} does not exist")
        if not found:
            raise FileNotFoundError(f"data.curated: {pattern!r} matches no Parquet file")
        out.extend(proto + p if proto and not p.startswith(proto) else p for p in sorted(found))
    return sorted(set(out))


def plan_units(files: list[str]) -> list[Unit]:
    """One unit per Parquet row group, in file order; footers are read in parallel (object
    stores answer slowly but concurrently) and every file's schema is checked up front."""
    from concurrent.futures import ThreadPoolExecutor

    def footer(url: str) -> list[Unit]:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_schema(pf.schema_arrow, CURATED_SCHEMA, url)
            meta = pf.metadata
        stem = hashlib.sha1(url.encode()).hexdigest()[:12]
        units, first = [], 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            units.append(Unit(f"{stem}-{rg:05d}", url, rg, n, first))
            first += n
        return units

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [u for units in pool.map(footer, files) for u in units]


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    index: int
    units: list[Unit]

    @property
    def window_id(self) -> str:
        return f"w{self.index:05d}"


def plan_windows(units: list[Unit], window_samples: int) -> list[Window]:
    """Consecutive units, cut when a window reaches ``window_samples`` rows (a unit is never
    split, so a window may hold up to one unit more)."""
    windows: list[Window] = []
    current: list[Unit] = []
    rows = 0
    for unit in units:
        current.append(unit)
        rows += unit.num_rows
        if rows >= window_samples:
            windows.append(Window(len(windows), current))
            current, rows = [], 0
    if current:
        windows.append(Window(len(windows), current))
    return windows


def encode_settings(manifest: Manifest) -> EncodeSettings:
    p = manifest.resolved_pack()
    return EncodeSettings(
        seq_len=p.seq_len,
        max_image_tokens=p.max_image_tokens,
        min_pixels=p.min_pixels,
        max_pixels=p.max_pixels,
        max_decode_pixels=p.max_decode_pixels,
        encoding=p.image_encoding.to_encoding(),
        caption_prompt=p.caption_prompt,
        caption_choice=p.caption_choice,
        recaption_ratio=p.recaption_ratio,
        seed=p.seed,
    )


def bucket_of(max_tokens_per_image: int, bounds: list[tuple[str, int]]) -> str:
    for name, bound in bounds:
        if max_tokens_per_image <= bound:
            return name
    raise ValueError(f"an image of {max_tokens_per_image} tokens is above every bucket")


class PackWindows:
    """Ray Data stage: encode, plan and write whole windows; the tokenizer loads once per actor."""

    def __init__(self, manifest_json: str, output: str):
        self.manifest = Manifest.model_validate_json(manifest_json)
        self.pack = self.manifest.resolved_pack()
        self.encoder = SampleEncoder(
            load_tokenizer(self.pack.tokenizer), encode_settings(self.manifest)
        )
        self.bounds = [(b.name, b.max_image_tokens) for b in self.pack.buckets]
        self.fs, self.root = url_to_fs(output)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results = []
        for payload in batch["window"]:
            w = json.loads(payload)
            window = Window(w["index"], [Unit(**u) for u in w["units"]])
            results.append(json.dumps(self.pack_window(window)))
        return {"result": results}

    def pack_window(self, window: Window) -> dict:
        marker = join(self.root, WORK_DIR, "windows", f"{window.window_id}.json")
        if self.fs.exists(marker):
            with self.fs.open(marker, "rb") as f:
                return json.load(f)
        t0 = time.perf_counter()
        samples: dict[tuple[str, int], dict] = {}
        lengths: list[dict] = []
        unit_stats = [self.encode_unit(unit, samples, lengths) for unit in window.units]
        t_encode = time.perf_counter() - t0
        table = pa.Table.from_pylist(lengths, schema=LENGTH_SCHEMA)
        plan = plan_window(table, self.pack, window.index)
        if plan.text_surplus:
            self._write_text_surplus(window, plan.text_surplus, samples)
        shards = []
        for shard in plan.shards:
            packs = [
                build_pack(
                    f"{shard.bucket}-{window.index:05d}-{shard.index:04d}-{p:04d}",
                    shard.bucket,
                    [samples[key] for key in keys],
                )
                for p, keys in enumerate(shard.packs)
            ]
            shards.append(asdict(write_shard(self.fs, self.root, shard.path, shard.bucket, packs)))
        result = {
            "window": window.window_id,
            "units": unit_stats,
            "text_over_ratio": len(plan.text_surplus),
            "shards": shards,
            "encode_seconds": t_encode,
            "seconds": time.perf_counter() - t0,
        }
        atomic_write(self.fs, marker, json.dumps(result).encode())  # the window is done
        return result

    def encode_unit(self, unit: Unit, samples: dict, lengths: list[dict]) -> dict:
        """Encode one unit into ``samples`` / ``lengths``; write its rejected rows."""
        in_fs, in_path = url_to_fs(unit.file)
        with in_fs.open(in_path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(unit.row_group)
        rejected: list[dict] = []
        for i, row in enumerate(table.to_pylist()):
            try:
                sample = self.encoder(row)
            except SampleRejected as e:
                rejected.append(self._rejected(unit, i, row, e.reason, e.detail))
                continue
            text_only = not sample.images  # from the content: a wrong flag cannot break buckets
            bucket = (
                None if text_only else bucket_of(sample.max_image_tokens_per_image, self.bounds)
            )
            samples[(unit.unit_id, i)] = {
                "sample_id": row["sample_id"],
                "source": row["source"],
                "text_only": text_only,
                **{k: getattr(sample, k) for k in SAMPLE_FIELDS},
            }
            lengths.append(
                {
                    "unit_id": unit.unit_id,
                    "row": i,
                    "sample_id": row["sample_id"],
                    "source": row["source"],
                    "text_only": text_only,
                    "bucket": bucket,
                    "num_tokens": sample.num_tokens,
                    "num_image_tokens": sample.num_image_tokens,
                }
            )
        if rejected:
            atomic_write(
                self.fs,
                join(self.root, rejected_name(unit.unit_id)),
                table_to_parquet_bytes(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA)),
            )
        return {
            "unit_id": unit.unit_id,
            "rows_in": table.num_rows,
            "dropped": dict(Counter(r["reason"] for r in rejected)),
            "input_bytes": table.nbytes,
        }

    @staticmethod
    def _rejected(unit: Unit, i: int, row: dict, reason: str, detail: str) -> dict:
        return {
            "sample_id": row.get("sample_id"),
            "source": row.get("source"),
            "url": row.get("url"),
            "row": row.get("row"),
            "input_file": unit.file,
            "input_row": unit.first_row + i,
            "reason": reason,
            "detail": detail[:500],
        }

    def _write_text_surplus(
        self, window: Window, surplus: list[tuple[str, int]], samples: dict
    ) -> None:
        by_unit = {u.unit_id: u for u in window.units}
        rows = [
            {
                "sample_id": samples[(u, r)]["sample_id"],
                "source": samples[(u, r)]["source"],
                "url": None,
                "row": None,
                "input_file": by_unit[u].file,
                "input_row": by_unit[u].first_row + r,
                "reason": "text_over_ratio",
                "detail": "more text-only samples than pack.text_ratio allows",
            }
            for u, r in surplus
        ]
        atomic_write(
            self.fs,
            join(self.root, rejected_name(f"{window.window_id}-text_over_ratio")),
            table_to_parquet_bytes(pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)),
        )


SAMPLE_FIELDS = (
    "input_ids",
    "labels",
    "t_index",
    "h_index",
    "w_index",
    "image_ordinal",
    "images",
    "image_heights",
    "image_widths",
)


# ---------------------------------------------------------------------------------------------
# Planning a window (pure)
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardPlan:
    bucket: str
    window: int
    index: int  # shard number within the window and bucket
    packs: list[list[tuple[str, int]]]  # per pack, (unit_id, row) of its samples in order

    @property
    def path(self) -> str:
        return shard_name(self.bucket, self.window, self.index)


@dataclass
class Plan:
    shards: list[ShardPlan] = field(default_factory=list)
    text_surplus: list[tuple[str, int]] = field(default_factory=list)  # (unit_id, row)


def plan_window(lengths: pa.Table, pack: PackSpec, window: int) -> Plan:
    """Deterministic pack plan of one window from its samples' length columns.

    ``lengths`` has :data:`LENGTH_SCHEMA`'s columns in unit order; ``pack`` is the resolved
    pack settings.
    """
    bucket_names = [b.name for b in pack.buckets]
    plan = Plan()
    cols = {c: lengths[c].to_numpy(zero_copy_only=False) for c in lengths.column_names}
    text_only = cols["text_only"].astype(bool)
    text_idx, mm_idx = np.flatnonzero(text_only), np.flatnonzero(~text_only)
    keep_text, surplus = _select_text(text_idx, len(mm_idx), pack.text_ratio, pack.seed, window)
    plan.text_surplus = [(cols["unit_id"][i], int(cols["row"][i])) for i in surplus]
    members = {b: mm_idx[cols["bucket"][mm_idx] == b] for b in bucket_names}
    for b, extra in _spread_text(keep_text, members, bucket_names).items():
        members[b] = np.concatenate([members[b], extra]).astype(np.int64)
    for b in bucket_names:
        idx = members[b]
        if not idx.size:
            continue
        groups = choose_groups(
            cols["num_tokens"][idx],
            cols["num_image_tokens"][idx],
            pack.seq_len,
            pack.max_image_tokens,
            seed=pack.seed + window,
        )
        packs = [
            [(cols["unit_id"][idx[g]], int(cols["row"][idx[g]])) for g in grp] for grp in groups
        ]
        for k, s in enumerate(range(0, len(packs), pack.packs_per_shard)):
            plan.shards.append(ShardPlan(b, window, k, packs[s : s + pack.packs_per_shard]))
    return plan


def _select_text(
    text_idx: np.ndarray, n_mm: int, ratio: float, seed: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep text-only samples so that text / (text + multimodal) is ``ratio``; a window with no
    multimodal samples keeps all its text. Returns (kept, surplus), chosen by a seeded order."""
    if n_mm == 0:
        return text_idx, text_idx[:0]
    target = int(round(ratio / (1.0 - ratio) * n_mm))
    if len(text_idx) <= target:
        return text_idx, text_idx[:0]
    order = np.random.default_rng([seed, window, 7]).permutation(len(text_idx))
    return np.sort(text_idx[order[:target]]), np.sort(text_idx[order[target:]])


def _spread_text(
    text_idx: np.ndarray, members: dict[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    """Give each bucket a share of the text samples proportional to its multimodal samples
    (largest remainder), so every bucket keeps the same text ratio. With no multimodal samples
    everything goes to the first bucket."""
    counts = np.array([len(members[b]) for b in names], dtype=np.float64)
    if counts.sum() == 0:
        counts[0] = 1.0
    quota = counts / counts.sum() * len(text_idx)
    share = np.floor(quota).astype(np.int64)
    for j in np.argsort(-(quota - share), kind="stable")[: len(text_idx) - share.sum()]:
        share[j] += 1
    bounds = np.concatenate([[0], np.cumsum(share)])
    return {b: text_idx[bounds[j] : bounds[j + 1]] for j, b in enumerate(names)}


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass
class PackResult:
    output: str
    index: dict
    skipped: bool  # True when the dataset was already complete


def run_pack(manifest: Manifest, *, concurrency: int | None = None) -> PackResult:
    """Run (or resume) the pack job of ``manifest``; returns the index of the packed dataset."""
    import ray

    output = manifest.data.packed.rstrip("/")
    fs, root = url_to_fs(output)
    mhash = manifest.content_hash()
    index_path = join(root, INDEX_NAME)
    if fs.exists(index_path):
        with fs.open(index_path, "rb") as f:
            index = json.load(f)
        if index.get("manifest", {}).get("sha256") != mhash:
            raise OutputConflict(
                f"{output} already holds a dataset packed from another manifest "
                f"(index manifest sha256 {index.get('manifest', {}).get('sha256', '?')[:12]}, "
                f"this one {mhash[:12]}); choose a new data.packed or delete the old dataset"
            )
        return PackResult(output, index, skipped=True)
    _check_work_dir(fs, root, mhash)

    t0 = time.perf_counter()
    pack = manifest.resolved_pack()
    files = list_inputs(manifest.data.curated)
    windows = plan_windows(plan_units(files), pack.window_samples)
    log.info("pack %s: %d input files, %d windows", manifest.name, len(files), len(windows))
    workers = min(len(windows), concurrency or max(1, int(ray.cluster_resources().get("CPU", 1))))
    items = [
        {"window": json.dumps({"index": w.index, "units": [asdict(u) for u in w.units]})}
        for w in windows
    ]
    results = [
        json.loads(r["result"])
        for r in ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        .map_batches(
            PackWindows,
            fn_constructor_args=(manifest.model_dump_json(), output),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
            num_cpus=1,
        )
        .take_all()
    ]
    results.sort(key=lambda r: r["window"])
    index = _make_index(manifest, mhash, results, time.perf_counter() - t0)
    write_index(fs, root, index)  # the commit point, after every shard
    return PackResult(output, index, skipped=False)


def _check_work_dir(fs, root: str, mhash: str) -> None:
    """Resume only work done for the same manifest; start fresh state for a new one."""
    old = claim_work_dir(fs, join(root, WORK_DIR), "manifest.sha256", mhash)
    if old is not None:
        raise OutputConflict(
            f"{root}/{WORK_DIR} holds unfinished work of another manifest (sha256 {old[:12]}); "
            f"delete it or choose a new data.packed"
        )


def _make_index(
    manifest: Manifest, mhash: str, windows: list[dict], seconds: float
) -> dict[str, Any]:
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


def format_summary(index: dict) -> str:
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


def verify_counts(index: dict) -> None:
    """Every input row is packed or dropped with a reason (raise if not)."""
    t = index["totals"]
    accounted = t["samples"] + sum(t["dropped"].values())
    if accounted != t["samples_in"]:
        raise RuntimeError(f"{t['samples_in']} samples in but {accounted} packed or dropped")
