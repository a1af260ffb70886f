"""The curation job: raw url + caption (or conversation, or text) sources -> curated samples.

Stages, each a set of Ray tasks over **units** (``download.rows_per_task`` consecutive rows of
one source file, :mod:`neo_data.curate.plan`)::

    1. curate   fetch images (threads inside the task), decode, filter, hash
                -> _work/units/<unit>.parquet (candidates), rejected/<unit>.parquet,
                   then _work/units/<unit>.json (the unit's completion marker, with its counts)
    2. dedup    exact (sha256) and near (perceptual hash) duplicates across the whole run:
                Ray tasks over hash-partitioned key files -> _work/dedup/decided/<group>.parquet
                (:mod:`neo_data.curate.dedup_stage`; the rule: :mod:`neo_data.curate.dedup`)
    3. finalize candidates minus duplicates -> samples/<unit>.parquet,
                duplicates -> rejected/<unit>-dedup.parquet, then _work/final/<unit>.json
    4. report   report.json (written last: the commit point) and a printed table
                (:mod:`neo_data.curate.report`)

Downloads: ``curate.download.engine`` picks the function behind each request: ``neo`` (default:
img2dataset's user agent and opt-out rule with a byte cap and a deadline) or ``img2dataset``
(its own ``download_image``, imported in the task only then); ``neo_data/curate/fetch.py`` and
``DownloadSpec`` say why ``neo`` is the default and how img2dataset's errors map to reasons.

Why img2dataset's downloader inside our own Ray tasks rather than its Ray distributor: the
distributor first rewrites the whole input into feather shards in one process, numbers rows by
its own shard keys (lineage to the source row is lost), takes one set of options per run (our
sources each have theirs) and writes the images to its own output, which we would then read back
to filter. One task that downloads *and* filters a unit writes each image once, keeps the source
row, and marks the unit done -- the unit of resumption and of scale (add nodes, units spread).

Output layout (``curate.output``, local or ``s3://``)::

    <output>/
    ├── report.json                 counts per source and reason, bytes, throughput; last
    ├── samples/<unit>.parquet      neo.curated rows (neo_data/format/schema.py), what `neo pack` reads
    ├── rejected/<unit>.parquet     rows dropped at read/download/filter: source, url, row,
    ├── rejected/<unit>-dedup.parquet   input_file, input_row, stage, reason, detail, meta
    └── _work/                      manifest hash, plan, unit markers, dedup decisions

``<unit>`` is ``<source>-<file number>-<chunk>``; ``sample_id`` is ``<source>-<row>``. Every
input row ends in exactly one of samples/ or rejected/ (counted again from those files before the
report is written). A rerun after a crash redoes only unfinished units and writes identical
files; a rerun after success finds report.json (same manifest) and does nothing. Either refuses
when the input files changed since the output was started (``neo_data/curate/resume.py``).
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neo_data.console import Progress
from neo_data.curate.dedup_stage import remove_work, run_dedup, unit_duplicates
from neo_data.curate.fetch import img2dataset_downloader
from neo_data.curate.plan import Unit, curate_spec_of, plan_units, spec_hash
from neo_data.curate.report import REPORT_NAME, make_report, verify_report
from neo_data.curate.resume import (
    check_inputs_unchanged,
    check_plan,
    done_units,
    read_markers,
    recount,
    verify_against_outputs,
)
from neo_data.curate.rows import RowContext, process_row
from neo_data.curate.sources import read_rows
from neo_data.format.schema import CURATED_SCHEMA, REJECTED_DIR, WORK_DIR
from neo_data.format.storage import (
    atomic_write,
    join,
    resume_or_refuse,
    table_to_parquet_bytes,
    url_to_fs,
)
from neo_data.manifest import Manifest
from neo_data.manifest.curate import CurateSpec

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
SAMPLES_ROW_GROUP = 256  # rows per Parquet row group of samples/ (the pack job's work unit)

CANDIDATE_SCHEMA = CURATED_SCHEMA.append(pa.field("_dedup_key", pa.string())).append(
    pa.field("_phash", pa.int64())
)
CURATE_REJECTED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("input_file", pa.string()),
        pa.field("input_row", pa.int64()),
        pa.field("stage", pa.string(), nullable=False),  # read | download | filter | dedup
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("meta", pa.string()),  # JSON lineage: download attempts, filter decisions, ...
    ]
)


@dataclass
class CurateResult:
    output: str
    report: dict[str, Any]
    skipped: bool  # True when the output was already complete


def _paths(root: str, unit_id: str) -> dict[str, str]:
    return {
        "candidates": join(root, WORK_DIR, "units", f"{unit_id}.parquet"),
        "unit_marker": join(root, WORK_DIR, "units", f"{unit_id}.json"),
        "rejected": join(root, REJECTED_DIR, f"{unit_id}.parquet"),
        "samples": join(root, SAMPLES_DIR, f"{unit_id}.parquet"),
        "dup_rejected": join(root, REJECTED_DIR, f"{unit_id}-dedup.parquet"),
        "final_marker": join(root, WORK_DIR, "final", f"{unit_id}.json"),
    }


# ---------------------------------------------------------------------------------------------
# Stage 1: curate a unit (Ray task)
# ---------------------------------------------------------------------------------------------


def curate_unit(spec_json: str, unit: Unit, output: str) -> dict[str, Any]:
    """Fetch, decode, filter and hash one unit's rows; write candidates, rejections, marker."""
    t0 = time.perf_counter()
    spec = CurateSpec.model_validate_json(spec_json)
    source = spec.sources[unit.source]
    ctx = RowContext(source, spec.source_filters(source), spec.source_download(source), unit.file)
    rows = read_rows(unit.file, unit.format, unit.start, unit.stop)
    if len(rows) != unit.stop - unit.start:
        raise RuntimeError(f"{unit.file}: expected {unit.stop - unit.start} rows, read {len(rows)}")
    if ctx.download.engine == "img2dataset" and source.kind != "text":
        img2dataset_downloader()  # its import (seconds) once here, not in every row's fetch time

    def one(i: int):
        return process_row(ctx, rows[i], unit.first_row + i, unit.start + i)

    with ThreadPoolExecutor(max_workers=min(ctx.download.threads, max(1, len(rows)))) as pool:
        results = list(pool.map(one, range(len(rows))))
    samples = [r.sample for r in results if r.sample is not None]
    rejected = [r.rejected for r in results if r.rejected is not None]
    fs, root = url_to_fs(output)
    p = _paths(root, unit.unit_id)
    atomic_write(fs, p["candidates"], table_to_parquet_bytes(_table(samples, CANDIDATE_SCHEMA)))
    rej = _table(rejected, CURATE_REJECTED_SCHEMA) if rejected else None
    _write_or_remove(fs, p["rejected"], rej)
    marker = {
        "unit": asdict(unit),
        "rows_in": len(rows),
        "candidates": len(samples),
        "rejected": dict(Counter(r["reason"] for r in rejected)),
        "bytes_downloaded": sum(r.bytes_downloaded for r in results),
        "images_downloaded": sum(r.images_downloaded for r in results),
        "fetch_seconds": round(sum(r.fetch_seconds for r in results), 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    atomic_write(fs, p["unit_marker"], json.dumps(marker).encode())
    return marker


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def _write_or_remove(fs, path: str, table: pa.Table | None, row_group: int | None = None) -> None:
    """Write a unit's part, or remove the one an interrupted earlier attempt of the unit left
    (a retry that rejects nothing must not keep the first attempt's rejections)."""
    if table is not None:
        atomic_write(fs, path, table_to_parquet_bytes(table, row_group))
    elif fs.exists(path):
        fs.rm(path)


# ---------------------------------------------------------------------------------------------
# Stage 3: finalize a unit (Ray task)
# ---------------------------------------------------------------------------------------------


def finalize_unit(unit: Unit, group: int, names: list[str], output: str) -> dict[str, Any]:
    """Candidates minus duplicates (decided for dedup ``group``) -> samples/; duplicates ->
    rejected/ with the sample they repeat."""
    dups = unit_duplicates(output, group, unit, names)
    fs, root = url_to_fs(output)
    p = _paths(root, unit.unit_id)
    with fs.open(p["candidates"], "rb") as f:
        cand = pq.read_table(f, schema=CANDIDATE_SCHEMA)
    ids = cand.column("sample_id").to_pylist()
    keep = pa.array([sid not in dups for sid in ids], type=pa.bool_())
    kept = cand.filter(keep).select(CURATED_SCHEMA.names).cast(CURATED_SCHEMA)
    _write_or_remove(fs, p["samples"], kept if kept.num_rows else None, SAMPLES_ROW_GROUP)
    rejected = [_dup_rejected(r, unit, dups[r["sample_id"]])
                for r in cand.filter(pc.invert(keep))
                .select(["sample_id", "source", "url", "row", "meta"]).to_pylist()]  # fmt: skip
    dup = _table(rejected, CURATE_REJECTED_SCHEMA) if rejected else None
    _write_or_remove(fs, p["dup_rejected"], dup)
    images = kept.column("images").to_pylist()
    marker = {
        "unit_id": unit.unit_id,
        "kept": kept.num_rows,
        "rejected": dict(Counter(r["reason"] for r in rejected)),
        "images_kept": sum(len(i or []) for i in images),
        "bytes_kept": sum(len(x["bytes"]) for i in images for x in i or []),
    }
    atomic_write(fs, p["final_marker"], json.dumps(marker).encode())
    return marker


def _dup_rejected(r: dict, unit: Unit, dup: dict) -> dict:
    meta = json.loads(r["meta"])
    detail = f"of {dup['of']}" + (f" (Hamming {dup['distance']})" if dup["distance"] else "")
    return {
        **{k: r[k] for k in ("sample_id", "source", "url", "row")},
        "input_file": meta.get("input_file"),
        "input_row": meta.get("input_row"),
        "stage": "dedup",
        "reason": dup["reason"],
        "detail": detail,
        "meta": r["meta"],
    }


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def run_curate(manifest: Manifest, *, concurrency: int | None = None) -> CurateResult:
    """Run (or resume) the curation of ``manifest``'s ``curate:`` section on Ray."""
    import ray

    spec = curate_spec_of(manifest)
    output = spec.output.rstrip("/")
    fs, root = url_to_fs(output)
    shash = spec_hash(spec)
    done = resume_or_refuse(
        output,
        shash,
        stamp="curate.sha256",
        made_with="another `curate:` section",
        field="curate.output",
        commit=(REPORT_NAME, lambda report: report.get("manifest", {}).get("curate_sha256")),
    )
    if done is not None:
        check_inputs_unchanged(output, spec)
        return CurateResult(output, done, skipped=True)

    t0 = time.perf_counter()
    units = plan_units(spec)
    check_plan(output, spec, units, lambda root, uid: _paths(root, uid)["unit_marker"])
    log.info("curate %s: %d sources, %d units", manifest.name, len(spec.sources), len(units))
    workers = concurrency or spec.download.processes
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    spec_json = spec.model_dump_json()

    curated = done_units(fs, root, "units")
    todo = [u for u in units if u.unit_id not in curated]
    curate_task = ray.remote(curate_unit).options(num_cpus=1)
    _run_bounded(lambda u: curate_task.remote(spec_json, u, output), todo, workers, "download")
    t_curate = time.perf_counter() - t0

    paths = lambda u: _paths(root, u.unit_id)["candidates"]  # noqa: E731
    dedup, dedup_stats = run_dedup(spec, units, paths, output, _run_bounded, workers)
    t_dedup = time.perf_counter() - t0 - t_curate
    final_task = ray.remote(finalize_unit).options(num_cpus=0.5)
    finished = done_units(fs, root, "final")
    todo_final = [u for u in units if u.unit_id not in finished]
    names = [s.name for s in spec.sources]
    _run_bounded(
        lambda u: final_task.remote(u, dedup.group_of(u), names, output),
        todo_final,
        workers,
        "finalize",
    )
    seconds = time.perf_counter() - t0
    report = make_report(
        manifest,
        spec,
        shash,
        units,
        read_markers(fs, root, units, _paths),
        {
            "seconds": round(seconds, 3),
            "curate_seconds": round(t_curate, 3),
            "dedup_seconds": round(t_dedup, 3),
            "finalize_seconds": round(seconds - t_curate - t_dedup, 3),
            "units_run": len(todo),
            "units_resumed": len(units) - len(todo),
            **dedup_stats,
        },
    )
    verify_report(report)
    verify_against_outputs(report, spec, units, recount(fs, root, units, _paths))
    _cleanup(fs, root, units)  # safe before the report: dedup and final markers are all written
    atomic_write(fs, join(root, REPORT_NAME), json.dumps(report, indent=2).encode())
    return CurateResult(output, report, skipped=False)


def _run_bounded(
    submit: Callable[[Any], Any], units: list, limit: int, name: str = "curate"
) -> list[dict]:
    """Run one task per unit with at most ``limit`` in flight (a bounded number of units'
    images in memory; a failed task raises here, and the rerun resumes). A progress line (rows
    when the items are curate units, else tasks; rate and ETA) when
    :meth:`~neo_data.console.Progress.due`."""
    import ray

    curate_units = bool(units) and isinstance(units[0], Unit)
    rows = [u.stop - u.start for u in units] if curate_units else [1] * len(units)
    progress = Progress(name, sum(rows), "rows" if curate_units else "tasks")
    pending: dict = {}
    results = []
    queue = list(enumerate(units))
    done_rows = 0
    while queue or pending:
        while queue and len(pending) < limit:
            k, u = queue.pop(0)
            pending[submit(u)] = k
        [ready], _ = ray.wait(list(pending), num_returns=1)
        done_rows += rows[pending.pop(ready)]
        results.append(ray.get(ready))
        if progress.due(done_rows) or not (queue or pending):
            extra = f"{len(results)}/{len(units)} units" if curate_units else ""
            log.info(progress.line(done_rows, extra))
    return results


def _cleanup(fs, root: str, units: list[Unit]) -> None:
    """Drop the candidates (a second copy of every image), the dedup stage's key files and
    temporary files a killed run left behind; markers and dedup decisions stay (small)."""
    remove_work(fs, root)
    for u in units:
        path = _paths(root, u.unit_id)["candidates"]
        if fs.exists(path):
            fs.rm(path)
    for d in (SAMPLES_DIR, REJECTED_DIR, f"{WORK_DIR}/units", f"{WORK_DIR}/final"):
        base = join(root, d)
        if fs.exists(base):
            for leftover in fs.glob(join(base, "*.tmp-*")):
                fs.rm(leftover)
