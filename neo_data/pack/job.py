"""The pack job: curated samples -> resolution-bucketed packed shards, on Ray actors.

The input's Parquet row groups are work units; interleaved across files, they form **windows**
of about ``pack.window_samples`` samples (:mod:`neo_data.pack.plan`, which also decides the text
quota over the whole input). One call of a :class:`PackWindows` actor (one per CPU, the
tokenizer loaded once each) packs one window, start to finish:

1. **encode** every row (:class:`~neo_data.encoding.encode.SampleEncoder`: decode, smart
   resize, encode, tokenize, T/H/W); rejected rows go to ``rejected/<unit>.parquet`` with their
   reason;
2. **plan** (:mod:`neo_data.pack.plan`, pure, deterministic for a seed): keep the text-only
   samples the input's quota keeps, spread them over the buckets, group each bucket's samples
   by first-fit decreasing, cut the packs into shards;
3. **write** the shards atomically, then ``_work/windows/<window>.json`` (the window's
   completion marker, holding the units it covers, its shard infos and counts).

Image bytes are read once and written once: no intermediate copy, no shuffle. Windows run in
parallel, two queued per actor so none waits for the driver between windows (plain actor calls:
a window is seconds of work, and Ray Data's streaming executor cost a driver core on small
machines for no gain here); a window's fill loss is at most one partial pack per bucket. A
rerun after a crash redoes only unfinished windows (their shards come out identical) after
checking that the plan is the one its markers cover (:mod:`neo_data.pack.resume`: a changed
input is refused, naming what changed); before the index, the outputs are recounted against
the input rows (every row packed or rejected exactly once). The index
(:mod:`neo_data.pack.report`) is written last, and a rerun after success finds it (same
manifest hash and inputs) and does nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neo_data.encoding.encode import EncodeSettings, SampleEncoder, SampleRejected
from neo_data.encoding.tokens import load_tokenizer
from neo_data.format.schema import (
    INDEX_NAME,
    REJECTED_DIR,
    REJECTED_SCHEMA,
    WORK_DIR,
    rejected_name,
    shard_name,
)
from neo_data.format.shards import open_shard, write_index, write_shard
from neo_data.format.storage import (
    atomic_write,
    join,
    list_inputs,
    remove_stale_temporaries,
    resume_or_refuse,
    table_to_parquet_bytes,
    url_to_fs,
)
from neo_data.manifest import Manifest
from neo_data.pack.packing import build_pack
from neo_data.pack.plan import (
    LENGTH_SCHEMA,
    Unit,
    Window,
    bucket_of,
    plan_units,
    plan_window,
    plan_windows,
    read_input_ids,
    text_quota,
)
from neo_data.pack.report import make_report, recount, verify_report
from neo_data.pack.resume import (
    check_finished,
    check_marker,
    claim_plan,
    inputs_record,
    marker_covers,
    plan_record,
)

log = logging.getLogger(__name__)


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


class PackWindows:
    """Encode, plan and write whole windows (a Ray actor: the tokenizer loads once per actor)."""

    def __init__(self, manifest_json: str, output: str):
        self.manifest = Manifest.model_validate_json(manifest_json)
        self.pack = self.manifest.resolved_pack()
        self.encoder = SampleEncoder(
            load_tokenizer(self.pack.tokenizer), encode_settings(self.manifest)
        )
        self.bounds = [(b.name, b.max_image_tokens) for b in self.pack.buckets]
        self.fs, self.root = url_to_fs(output)

    def pack_window(self, window: Window, text_threshold: int) -> dict:
        marker = join(self.root, WORK_DIR, "windows", f"{window.window_id}.json")
        if self.fs.exists(marker):
            with self.fs.open(marker, "rb") as f:
                doc = json.load(f)
            check_marker(doc, window, marker)
            return doc
        t0 = time.perf_counter()
        samples: dict[tuple[str, int], dict] = {}
        lengths: list[dict] = []
        unit_stats = [self.encode_unit(unit, samples, lengths) for unit in window.units]
        t_encode = time.perf_counter() - t0
        table = pa.Table.from_pylist(lengths, schema=LENGTH_SCHEMA)
        plan = plan_window(table, self.pack, window.index, text_threshold)
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
            rel = shard_name(shard.bucket, shard.window, shard.index, self.pack.format)
            fmt = (self.pack.format, self.pack.arrow_compression)
            shards.append(asdict(write_shard(self.fs, self.root, rel, shard.bucket, packs, *fmt)))
        result = {
            "window": window.window_id,
            "covers": marker_covers(window),
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
                text_only = not sample.images  # from the content: a wrong flag cannot break buckets
                bucket = (
                    None if text_only else bucket_of(sample.max_image_tokens_per_image, self.bounds)
                )
            except SampleRejected as e:
                rejected.append(self._rejected(unit, i, row, e.reason, e.detail))
                continue
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
    done = resume_or_refuse(
        output,
        mhash,
        stamp="manifest.sha256",
        made_with="another manifest",
        field="data.packed",
        commit=(INDEX_NAME, lambda index: index.get("manifest", {}).get("sha256")),
    )

    t0 = time.perf_counter()
    pack = manifest.resolved_pack()
    try:
        files = list_inputs(manifest.data.curated, "data.curated")
    except FileNotFoundError:
        if done is None:
            raise
        log.warning("%s is complete; its inputs are gone, so they were not compared", output)
        return PackResult(output, done, skipped=True)
    units = plan_units(files)
    inputs = inputs_record(units)
    if done is not None:
        check_finished(done, inputs, output)
        return PackResult(output, done, skipped=True)
    ids = read_input_ids(units)
    quota = text_quota(ids, pack.text_ratio, pack.seed)
    windows = plan_windows(units, pack.window_samples)
    claim_plan(fs, root, output, plan_record(inputs, windows, quota))
    for path in remove_stale_temporaries(fs, root, ["shards", REJECTED_DIR, WORK_DIR]):
        log.info("removed %s (left by a killed run)", path)
    log.info("pack %s: %d input files, %d windows", manifest.name, len(files), len(windows))
    workers = min(len(windows), concurrency or max(1, int(ray.cluster_resources().get("CPU", 1))))
    results = _pack_windows(manifest, output, windows, max(1, workers), quota.threshold)
    results.sort(key=lambda r: r["window"])
    index = make_report(manifest, mhash, results, time.perf_counter() - t0, inputs)
    verify_report(index)  # a miscount leaves no index: the dataset stays unfinished
    packed, rejected = output_ids(fs, root, index["shards"])
    problems = recount(packed, rejected, inputs["rows"], ids["sample_id"])
    if problems:
        raise RuntimeError(
            f"{output}: the outputs do not account for the input: " + "; ".join(problems)
        )
    write_index(fs, root, index)  # the commit point, after every shard
    return PackResult(output, index, skipped=False)


def _pack_windows(
    manifest: Manifest, output: str, windows: list[Window], workers: int, text_threshold: int
) -> list:
    """Every window through ``workers`` actors, two calls queued on each (the next window is
    waiting when one ends); a failed window raises here, and the rerun resumes."""
    import ray

    actor = ray.remote(num_cpus=1)(PackWindows)
    manifest_json = manifest.model_dump_json()
    actors = [actor.remote(manifest_json, output) for _ in range(workers)]
    queue = list(reversed(windows))
    pending: dict = {}
    results = []
    try:
        for a in actors * 2:
            if queue:
                pending[a.pack_window.remote(queue.pop(), text_threshold)] = a
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            a = pending.pop(done)
            results.append(ray.get(done))
            if queue:
                pending[a.pack_window.remote(queue.pop(), text_threshold)] = a
    finally:
        for a in actors:
            ray.kill(a)
    return results


def output_ids(
    fs: fsspec.AbstractFileSystem, root: str, shards: list[dict]
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The sample ids in the shards (from the files, not the markers; ``shards`` are index
    entries, either format) and in ``rejected/``."""
    packed = []
    for s in shards:
        reader = open_shard(fs, join(root, s["path"]), s.get("format", "parquet"), s.get("bytes"))
        packed.append(reader.read_all(["sample_ids"])["sample_ids"])
    rejected = []
    for path in sorted(fs.glob(join(root, REJECTED_DIR, "*.parquet"))):
        with fs.open(path, "rb") as f:
            rejected.append(pq.read_table(f, columns=["sample_id"])["sample_id"])
    flat = [pc.list_flatten(c) for c in packed]
    return (
        pa.chunked_array([c for a in flat for c in a.chunks], type=pa.string()),
        pa.chunked_array([c for a in rejected for c in a.chunks], type=pa.string()),
    )
