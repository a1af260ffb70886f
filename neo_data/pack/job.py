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
input is refused, naming what changed); before the index, every window's outputs are recounted
from its files against its input rows in Ray tasks (every row packed or rejected exactly once).
The driver holds per-unit and per-window records and counts, never a per-sample list: the text
quota comes from counting tasks (:func:`~neo_data.pack.plan.quota_from_passes`). The index
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

from neo_data.console import Progress
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
    KeyCounts,
    Unit,
    Window,
    bucket_of,
    key_counts,
    plan_units,
    plan_window,
    plan_windows,
    quota_from_passes,
    read_input_ids,
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
    workers = max(1, concurrency or int(ray.cluster_resources().get("CPU", 1)))
    quota = quota_from_passes(_count_passes(units, pack.seed, workers), pack.text_ratio)
    log.info(
        "pack %s: %d input rows, %d text-only; the text ratio keeps %d of them",
        manifest.name, quota.rows, quota.text_rows, quota.target,
    )  # fmt: skip
    windows = plan_windows(units, pack.window_samples)
    claim_plan(fs, root, output, plan_record(inputs, windows, quota))
    for path in remove_stale_temporaries(fs, root, ["shards", REJECTED_DIR, WORK_DIR]):
        log.info("removed %s (left by a killed run)", path)
    log.info("pack %s: %d input files, %d windows", manifest.name, len(files), len(windows))
    results = _pack_windows(
        manifest, output, windows, max(1, min(len(windows), workers)), quota.threshold
    )
    results.sort(key=lambda r: r["window"])
    index = make_report(manifest, mhash, results, time.perf_counter() - t0, inputs)
    verify_report(index)  # a miscount leaves no index: the dataset stays unfinished
    problems = _recount(fs, root, output, windows, results, inputs["rows"], workers)
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
    rows = {w.window_id: sum(u.num_rows for u in w.units) for w in windows}
    progress = Progress("pack", sum(rows.values()), "rows")
    done_rows = 0
    try:
        for a in actors * 2:
            if queue:
                pending[a.pack_window.remote(queue.pop(), text_threshold)] = a
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            a = pending.pop(done)
            results.append(ray.get(done))
            done_rows += rows[results[-1]["window"]]
            if progress.due(done_rows) or len(results) == len(windows):
                log.info(progress.line(done_rows, f"{len(results)}/{len(windows)} windows"))
            if queue:
                pending[a.pack_window.remote(queue.pop(), text_threshold)] = a
    finally:
        for a in actors:
            ray.kill(a)
    return results


# ---------------------------------------------------------------------------------------------
# Work the driver hands out instead of holding per-sample state
# ---------------------------------------------------------------------------------------------

ROWS_PER_COUNT_TASK = 500_000  # input rows one counting task reads (two small columns)


def _batches(units: list[Unit], parts: int, max_rows: int) -> list[list[Unit]]:
    """Consecutive units in about ``parts`` groups of at most ``max_rows`` rows (a unit is
    never split)."""
    total = sum(u.num_rows for u in units)
    size = max(1, min(max_rows, -(-total // max(1, parts))))
    batches: list[list[Unit]] = [[]]
    rows = 0
    for u in units:
        if batches[-1] and rows + u.num_rows > size:
            batches.append([])
            rows = 0
        batches[-1].append(u)
        rows += u.num_rows
    return [b for b in batches if b]


def _unit_key_counts(units: list[Unit], seed: int, prefix: int, bits: int, collect: bool):
    return key_counts(read_input_ids(units), seed, prefix, bits, collect)


def _count_passes(units: list[Unit], seed: int, workers: int):
    """A counting pass of :func:`~neo_data.pack.plan.quota_from_passes` as Ray tasks over
    batches of units (each reads its rows' ``sample_id`` / ``text_only``); the driver merges
    the results as they come, so it holds one histogram, never the ids."""
    import ray

    task = ray.remote(num_cpus=1)(_unit_key_counts)
    batches = _batches(units, 2 * workers, ROWS_PER_COUNT_TASK)

    def count(prefix: int, bits: int, collect: bool) -> KeyCounts:
        refs = [task.remote(b, seed, prefix, bits, collect) for b in batches]
        total = KeyCounts()
        while refs:
            [done], refs = ray.wait(refs, num_returns=1)
            total = total.merge(ray.get(done))
        return total

    return count


def _rejected_files(window: Window, result: dict) -> list[str]:
    """The ``rejected/`` files a finished window wrote (its marker's counts say which)."""
    names = [rejected_name(u["unit_id"]) for u in result["units"] if sum(u["dropped"].values())]
    if result.get("text_over_ratio"):
        names.append(rejected_name(f"{window.window_id}-text_over_ratio"))
    return names


def recount_window(output: str, window: Window, result: dict) -> dict:
    """Recount one finished window from its files: the sample ids in its shards and its
    ``rejected/`` files against the ids of its input rows (every row packed or rejected exactly
    once, :func:`~neo_data.pack.report.recount`). Memory is bounded by the window."""
    fs, root = url_to_fs(output)
    inputs = read_input_ids(window.units, ("sample_id",))["sample_id"]
    packed, rejected = [], []
    for s in result["shards"]:
        reader = open_shard(fs, join(root, s["path"]), s.get("format", "parquet"), s.get("bytes"))
        packed.extend(pc.list_flatten(reader.read_all(["sample_ids"])["sample_ids"]).chunks)
    problems = []
    for name in _rejected_files(window, result):
        try:
            with fs.open(join(root, name), "rb") as f:
                rejected.extend(pq.read_table(f, columns=["sample_id"])["sample_id"].chunks)
        except FileNotFoundError:
            problems.append(f"{name} is missing")
    packed_ids = pa.chunked_array(packed, type=pa.string())
    rejected_ids = pa.chunked_array(rejected, type=pa.string())
    problems += recount(packed_ids, rejected_ids, len(inputs), inputs)
    return {
        "window": window.window_id,
        "rows_in": len(inputs),
        "packed": len(packed_ids),
        "rejected": len(rejected_ids),
        "problems": problems,
    }


def _recount_windows(output: str, pairs: list[tuple[Window, dict]]) -> list[dict]:
    return [recount_window(output, w, r) for w, r in pairs]


def _recount(
    fs: fsspec.AbstractFileSystem,
    root: str,
    output: str,
    windows: list[Window],
    results: list[dict],
    rows_in: int,
    workers: int,
) -> list[str]:
    """Every window recounted from its files in Ray tasks (:func:`recount_window`); the driver
    sums the counts and checks that ``rejected/`` holds exactly the windows' files. The windows
    partition the input's units (the plan), so this accounts for every input row exactly once;
    a sample id that the *input* repeats in two windows is not a packing error and passes."""
    import ray

    by_id = {r["window"]: r for r in results}
    pairs = [(w, by_id[w.window_id]) for w in windows]
    task = ray.remote(num_cpus=1)(_recount_windows)
    per_task = max(1, -(-len(pairs) // (2 * workers)))
    refs = [task.remote(output, pairs[i : i + per_task]) for i in range(0, len(pairs), per_task)]
    problems: list[str] = []
    bad_windows = packed = rejected = counted = 0
    for ref in refs:
        for c in ray.get(ref):
            counted += c["rows_in"]
            packed += c["packed"]
            rejected += c["rejected"]
            if c["problems"]:
                bad_windows += 1
                if bad_windows <= 3:
                    problems += [f"window {c['window']}: {p}" for p in c["problems"]]
    if bad_windows > 3:
        problems.append(f"and {bad_windows - 3} more windows with problems")
    if counted != rows_in or packed + rejected != rows_in:
        problems.append(
            f"{rows_in} rows in, but the windows read {counted}, the shards hold {packed} "
            f"samples and rejected/ {rejected} rows"
        )
    expected = {n for w, r in pairs for n in _rejected_files(w, r)}
    found = {
        f"{REJECTED_DIR}/{p.rsplit('/', 1)[-1]}"
        for p in fs.glob(join(root, REJECTED_DIR, "*.parquet"))
    }
    stray = sorted(found - expected)
    if stray:
        problems.append(
            f"{len(stray)} file(s) in {REJECTED_DIR}/ belong to no window of the plan, "
            f"e.g. {stray[0]}"
        )
    return problems
