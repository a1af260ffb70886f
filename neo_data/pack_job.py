"""The pack job: curated samples -> resolution-bucketed packed shards, on Ray Data.

Three steps, each resumable:

1. **encode** (Ray Data, parallel): every work unit (one Parquet row group of the input) is
   decoded, resized, tokenized and given T/H/W tables by :class:`~neo_data.encode.SampleEncoder`.
   A unit writes ``_work/encoded/<unit>.parquet``, its rejected rows to ``rejected/<unit>.parquet``,
   and last ``_work/units/<unit>.json`` (its stats: the unit's completion marker). A rerun skips
   units that have the marker.
2. **plan** (driver, reads only length columns): per window of units, select text-only samples at
   the manifest's ratio, spread them over the buckets, group each bucket's samples with
   best-fit decreasing, and cut the packs into shards. Pure and deterministic for a seed.
3. **build** (Ray Data shuffle): encoded rows are routed to their shard with a ``groupby`` and
   each shard is written atomically; ``_work/shards/<name>.json`` marks it done. Shards already
   done are skipped on a rerun.

The index is written last. A rerun after success finds the index with the same manifest hash
and does nothing.
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

from neo_data.encode import EncodeSettings, SampleEncoder, SampleRejected
from neo_data.manifest import Manifest
from neo_data.packing import build_pack, choose_groups
from neo_data.schema import (
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
from neo_data.shards import (
    atomic_write,
    join,
    table_to_parquet_bytes,
    url_to_fs,
    write_index,
    write_shard,
)
from neo_data.tokens import load_tokenizer

log = logging.getLogger(__name__)

ENCODED_SCHEMA = pa.schema(
    [
        pa.field("unit_id", pa.string()),
        pa.field("row", pa.int32()),  # row within the unit
        pa.field("sample_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("text_only", pa.bool_()),
        pa.field("bucket", pa.string()),  # null for text-only samples (assigned when planning)
        pa.field("num_tokens", pa.int32()),
        pa.field("num_image_tokens", pa.int32()),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field("t_index", pa.list_(pa.int32())),
        pa.field("h_index", pa.list_(pa.int32())),
        pa.field("w_index", pa.list_(pa.int32())),
        pa.field("image_ordinal", pa.list_(pa.int32())),
        pa.field("images", pa.list_(pa.binary())),
        pa.field("image_heights", pa.list_(pa.int32())),
        pa.field("image_widths", pa.list_(pa.int32())),
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
    units = []
    for url in files:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_schema(pf.schema_arrow, CURATED_SCHEMA, url)
            meta = pf.metadata
        stem = hashlib.sha1(url.encode()).hexdigest()[:12]
        first = 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            units.append(Unit(f"{stem}-{rg:05d}", url, rg, n, first))
            first += n
    return units


# ---------------------------------------------------------------------------------------------
# Step 1: encode
# ---------------------------------------------------------------------------------------------


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


class EncodeUnits:
    """Ray Data stage: encode whole work units; heavy state (tokenizer) loads once per actor."""

    def __init__(self, manifest_json: str, output: str):
        self.manifest = Manifest.model_validate_json(manifest_json)
        pack = self.manifest.resolved_pack()
        self.encoder = SampleEncoder(load_tokenizer(pack.tokenizer), encode_settings(self.manifest))
        self.bounds = [(b.name, b.max_image_tokens) for b in pack.buckets]
        self.fs, self.root = url_to_fs(output)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        stats = [
            self.encode_unit(Unit(u, f, int(rg), int(n), int(first)))
            for u, f, rg, n, first in zip(
                batch["unit_id"],
                batch["file"],
                batch["row_group"],
                batch["num_rows"],
                batch["first_row"],
                strict=True,
            )
        ]
        return {"stats": [json.dumps(s) for s in stats]}

    def encode_unit(self, unit: Unit) -> dict:
        marker = join(self.root, WORK_DIR, "units", f"{unit.unit_id}.json")
        if self.fs.exists(marker):
            with self.fs.open(marker, "rb") as f:
                return json.load(f)
        t0 = time.perf_counter()
        in_fs, in_path = url_to_fs(unit.file)
        with in_fs.open(in_path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(unit.row_group)
        rows = table.to_pylist()
        encoded: dict[str, list] = {f.name: [] for f in ENCODED_SCHEMA}
        rejected: list[dict] = []
        for i, row in enumerate(rows):
            try:
                sample = self.encoder(row)
            except SampleRejected as e:
                rejected.append(self._rejected(unit, i, row, e.reason, e.detail))
                continue
            bucket = (
                None
                if row.get("text_only") or not sample.images
                else bucket_of(sample.max_image_tokens_per_image, self.bounds)
            )
            for k, v in {
                "unit_id": unit.unit_id,
                "row": i,
                "sample_id": row["sample_id"],
                "source": row["source"],
                "text_only": bucket is None,
                "bucket": bucket,
                "num_tokens": sample.num_tokens,
                "num_image_tokens": sample.num_image_tokens,
                "input_ids": sample.input_ids,
                "labels": sample.labels,
                "t_index": sample.t_index,
                "h_index": sample.h_index,
                "w_index": sample.w_index,
                "image_ordinal": sample.image_ordinal,
                "images": sample.images,
                "image_heights": sample.image_heights,
                "image_widths": sample.image_widths,
            }.items():
                encoded[k].append(v)
        if rejected:
            atomic_write(
                self.fs,
                join(self.root, rejected_name(unit.unit_id)),
                table_to_parquet_bytes(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA)),
            )
        enc_table = pa.Table.from_pydict(encoded, schema=ENCODED_SCHEMA)
        atomic_write(
            self.fs,
            join(self.root, WORK_DIR, "encoded", f"{unit.unit_id}.parquet"),
            table_to_parquet_bytes(enc_table, row_group_size=1024),
        )
        stats = {
            "unit_id": unit.unit_id,
            "rows_in": len(rows),
            "encoded": enc_table.num_rows,
            "dropped": dict(Counter(r["reason"] for r in rejected)),
            "input_bytes": table.nbytes,
            "seconds": time.perf_counter() - t0,
        }
        atomic_write(self.fs, marker, json.dumps(stats).encode())  # the unit's completion marker
        return stats

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


# ---------------------------------------------------------------------------------------------
# Step 2: plan
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardPlan:
    bucket: str
    index: int  # shard number within the bucket
    packs: list[list[tuple[str, int]]]  # per pack, (unit_id, row) of its samples in order

    @property
    def path(self) -> str:
        return shard_name(self.bucket, self.index)


@dataclass
class Plan:
    shards: list[ShardPlan] = field(default_factory=list)
    text_surplus: list[tuple[str, int]] = field(default_factory=list)  # (unit_id, row)


def plan_shards(lengths: pa.Table, manifest: Manifest) -> Plan:
    """Deterministic pack plan from the length columns of all encoded samples.

    ``lengths`` has ``unit_id, row, text_only, bucket, num_tokens, num_image_tokens`` in unit
    order. Windows of ``window_samples`` consecutive samples are planned independently so the
    driver's memory stays bounded at any dataset size.
    """
    pack = manifest.resolved_pack()
    bucket_names = [b.name for b in pack.buckets]
    next_shard = dict.fromkeys(bucket_names, 0)
    plan = Plan()
    n = lengths.num_rows
    cols = {c: lengths[c].to_numpy(zero_copy_only=False) for c in lengths.column_names}
    for w, start in enumerate(range(0, n, pack.window_samples)):
        sl = slice(start, min(n, start + pack.window_samples))
        win = {c: v[sl] for c, v in cols.items()}
        text_idx = np.flatnonzero(win["text_only"])
        mm_idx = np.flatnonzero(~win["text_only"])
        keep_text, surplus = _select_text(text_idx, len(mm_idx), pack.text_ratio, pack.seed, w)
        plan.text_surplus.extend((win["unit_id"][i], int(win["row"][i])) for i in surplus)
        members = {b: mm_idx[win["bucket"][mm_idx] == b] for b in bucket_names}
        for b, extra in _spread_text(keep_text, members, bucket_names).items():
            members[b] = np.concatenate([members[b], extra]).astype(np.int64)
        for b in bucket_names:
            idx = members[b]
            if not idx.size:
                continue
            groups = choose_groups(
                win["num_tokens"][idx],
                win["num_image_tokens"][idx],
                pack.seq_len,
                pack.max_image_tokens,
                seed=pack.seed + w,
            )
            packs = [
                [(win["unit_id"][idx[g]], int(win["row"][idx[g]])) for g in grp] for grp in groups
            ]
            for s in range(0, len(packs), pack.packs_per_shard):
                plan.shards.append(ShardPlan(b, next_shard[b], packs[s : s + pack.packs_per_shard]))
                next_shard[b] += 1
    return plan


def _select_text(
    text_idx: np.ndarray, n_mm: int, ratio: float, seed: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep text-only samples so that text / (text + multimodal) is ``ratio``; a dataset with no
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
# Step 3: build shards
# ---------------------------------------------------------------------------------------------


def assign_shard(batch: pa.Table, lookup: dict[tuple[str, int], tuple[str, int, int]]) -> pa.Table:
    """Ray Data stage: tag each encoded row with its shard, pack and position in the pack; rows
    the plan does not pack (text over the ratio, shards already done) are dropped here."""
    keys = zip(batch["unit_id"].to_pylist(), batch["row"].to_pylist(), strict=True)
    hits = [lookup.get(k) for k in keys]
    batch = batch.filter(pa.array([h is not None for h in hits]))
    hits = [h for h in hits if h is not None]
    return (
        batch.append_column("shard", pa.array([h[0] for h in hits], pa.string()))
        .append_column("pack", pa.array([h[1] for h in hits], pa.int32()))
        .append_column("position", pa.array([h[2] for h in hits], pa.int32()))
    )


def build_shard(group: pa.Table, output: str, bucket_of_shard: dict[str, str]) -> pa.Table:
    """Ray Data ``map_groups`` stage: all rows of one shard in, the shard written, its info out.

    Stateless tasks (not actors), so a small cluster never deadlocks with every CPU held by an
    idle actor of another stage."""
    fs, root = url_to_fs(output)
    path = group["shard"][0].as_py()
    bucket = bucket_of_shard[path]
    group = group.sort_by([("pack", "ascending"), ("position", "ascending")])
    packs_of = group["pack"].to_pylist()
    rows = group.drop_columns(
        ["shard", "unit_id", "row", "num_tokens", "num_image_tokens"]
    ).to_pylist()
    stem = path.rsplit("/", 1)[-1].removesuffix(".parquet").removeprefix("shard-")
    by_pack: dict[int, list[dict]] = {}
    for r, p in zip(rows, packs_of, strict=True):
        by_pack.setdefault(p, []).append(r)
    packs = [build_pack(f"{bucket}-{stem}-{p:04d}", bucket, by_pack[p]) for p in sorted(by_pack)]
    info = write_shard(fs, root, path, bucket, packs)
    atomic_write(fs, _shard_marker(root, path), json.dumps(asdict(info)).encode())
    return pa.Table.from_pylist([{"info": json.dumps(asdict(info))}])


def _shard_marker(root: str, path: str) -> str:
    return join(root, WORK_DIR, "shards", path.replace("/", "__") + ".json")


def build_lookup(plan: Plan) -> dict[tuple[str, int], tuple[str, int, int]]:
    return {
        key: (shard.path, p, pos)
        for shard in plan.shards
        for p, pack in enumerate(shard.packs)
        for pos, key in enumerate(pack)
    }


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass
class PackResult:
    output: str
    index: dict
    skipped: bool  # True when the dataset was already complete


def run_pack(
    manifest: Manifest, *, concurrency: int | None = None, keep_work: bool = False
) -> PackResult:
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
    files = list_inputs(manifest.data.curated)
    units = plan_units(files)
    log.info("pack %s: %d input files, %d work units", manifest.name, len(files), len(units))
    manifest_json = manifest.model_dump_json()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    conc = concurrency or cpus

    # 1. encode
    stats_ds = ray.data.from_items(
        [asdict(u) for u in units], override_num_blocks=max(1, len(units))
    ).map_batches(
        EncodeUnits,
        fn_constructor_args=(manifest_json, output),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(conc, max(1, len(units)))),
        num_cpus=1,
    )
    unit_stats = [json.loads(r["stats"]) for r in stats_ds.take_all()]
    t_encode = time.perf_counter() - t0

    # 2. plan
    encoded_files = [join(root, WORK_DIR, "encoded", f"{u.unit_id}.parquet") for u in units]
    length_cols = [
        "unit_id",
        "row",
        "sample_id",
        "source",
        "text_only",
        "bucket",
        "num_tokens",
        "num_image_tokens",
    ]
    tables = []
    for path in encoded_files:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=length_cols))
    lengths = (
        pa.concat_tables(tables) if tables else ENCODED_SCHEMA.empty_table().select(length_cols)
    )
    plan = plan_shards(lengths, manifest)
    if plan.text_surplus:
        _write_text_surplus(fs, root, plan, lengths, units)

    # 3. build (skipping shards finished by an earlier run)
    done: dict[str, dict] = {}
    for shard in plan.shards:
        marker = _shard_marker(root, shard.path)
        if fs.exists(marker) and fs.exists(join(root, shard.path)):
            with fs.open(marker, "rb") as f:
                done[shard.path] = json.load(f)
    todo = [s for s in plan.shards if s.path not in done]
    if todo:
        lookup = build_lookup(Plan(shards=todo))
        existing = [p for p in encoded_files if fs.exists(p)]
        ds = ray.data.read_parquet(
            existing,
            filesystem=_arrow_fs(output),
            schema=ENCODED_SCHEMA,
        )
        built = (
            ds.map_batches(assign_shard, fn_args=(lookup,), batch_format="pyarrow")
            .groupby("shard", num_partitions=max(1, min(len(todo), 4 * conc)))
            .map_groups(
                build_shard,
                fn_args=(output, {s.path: s.bucket for s in todo}),
                batch_format="pyarrow",
            )
            .take_all()
        )
        for r in built:
            info = json.loads(r["info"])
            done[info["path"]] = info

    # 4. index, last
    shard_infos = [done[s.path] for s in plan.shards]
    index = _make_index(
        manifest,
        mhash,
        shard_infos,
        unit_stats,
        len(plan.text_surplus),
        time.perf_counter() - t0,
        t_encode,
    )
    write_index(fs, root, index)
    if not keep_work:
        for sub in ("encoded", "shards"):
            d = join(root, WORK_DIR, sub)
            if fs.exists(d):
                fs.rm(d, recursive=True)
    return PackResult(output, index, skipped=False)


def _check_work_dir(fs, root: str, mhash: str) -> None:
    """Resume only work done for the same manifest; start fresh state for a new one."""
    stamp = join(root, WORK_DIR, "manifest.sha256")
    if fs.exists(stamp):
        with fs.open(stamp, "rb") as f:
            old = f.read().decode().strip()
        if old != mhash:
            raise OutputConflict(
                f"{root}/{WORK_DIR} holds unfinished work of another manifest (sha256 {old[:12]}); "
                f"delete it or choose a new data.packed"
            )
    else:
        atomic_write(fs, stamp, mhash.encode())


def _write_text_surplus(fs, root: str, plan: Plan, lengths: pa.Table, units: list[Unit]) -> None:
    by_unit = {u.unit_id: u for u in units}
    ids = {
        (u, r): (sid, src)
        for u, r, sid, src in zip(
            *(lengths[c].to_pylist() for c in ("unit_id", "row", "sample_id", "source")),
            strict=True,
        )
    }
    rows = [
        {
            "sample_id": ids[(u, r)][0],
            "source": ids[(u, r)][1],
            "url": None,
            "row": None,
            "input_file": by_unit[u].file,
            "input_row": by_unit[u].first_row + r,
            "reason": "text_over_ratio",
            "detail": "more text-only samples than text_ratio allows",
        }
        for u, r in plan.text_surplus
    ]
    atomic_write(
        fs,
        join(root, rejected_name("text_over_ratio")),
        table_to_parquet_bytes(pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)),
    )


def _arrow_fs(output: str):
    import pyarrow.fs as pafs

    fs, _ = url_to_fs(output)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _make_index(
    manifest: Manifest,
    mhash: str,
    shards: list[dict],
    unit_stats: list[dict],
    text_surplus: int,
    seconds: float,
    encode_seconds: float,
) -> dict[str, Any]:
    pack = manifest.resolved_pack()
    tok = load_tokenizer(pack.tokenizer)
    dropped: Counter = Counter()
    for s in unit_stats:
        dropped.update(s["dropped"])
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
    totals["samples_in"] = sum(s["rows_in"] for s in unit_stats)
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
        "timing": {"seconds": round(seconds, 3), "encode_seconds": round(encode_seconds, 3)},
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
