"""The recaption job: curated samples -> the same samples with a new caption beside the original.

Layout of ``recaption.output``::

    <output>/
    ├── samples/<input name>.parquet   every input row, curated schema, new captions added by
    │                                  the policy (``recaption_spec``); one file per input file
    ├── failures/<input name>.parquet  rows whose image or generation failed (REJECTED_SCHEMA:
    │                                  lineage, ``reason``, ``detail``); these rows are in
    │                                  samples/ too, unchanged
    ├── report.json                    counts (every input row is recaptioned, failed or
    │                                  skipped, by reason), provenance, timing; written last
    └── _work/                         spec.sha256 + one marker per finished input file,
                                       written after its output: a rerun skips those files

On Ray Data: each input row group is read by a task (only the columns the stage needs), rows go
in batches of ``batch_size`` through ``pool_size`` actors of :class:`RecaptionStage` (the
captioner is loaded once in ``__init__``; ``num_gpus`` per actor); a crashed actor is restarted
by Ray and its batch retried (Ray Data's actor-pool defaults). The driver receives only the results (text,
reason), and writes an input file's output as soon as all its rows are back: image bytes never
pass through a stage that does not need them, and a crash loses at most unfinished files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.format.schema import (
    CAPTION_TYPE,
    CURATED_SCHEMA,
    REJECTED_SCHEMA,
    WORK_DIR,
    check_schema,
)
from neo_data.format.storage import (
    atomic_write,
    claim_work_dir,
    join,
    table_to_parquet_bytes,
    url_to_fs,
)
from neo_data.manifest import Manifest
from neo_data.manifest.recaption import RecaptionSpec, check_policy
from neo_data.pack.job import OutputConflict, list_inputs
from neo_data.recaption.captioners import Caption, make_captioner

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
FAILURES_DIR = "failures"
REPORT_NAME = "report.json"
SPEC_STAMP = "spec.sha256"
# Fault injection for tests: a path; the first actor batch creates it and kills its process.
CRASH_ONCE_ENV = "NEO_RECAPTION_CRASH_ONCE"

RESULT_SCHEMA = pa.schema(
    [
        pa.field("input_file", pa.string()),
        pa.field("input_row", pa.int64()),
        pa.field("status", pa.string()),  # recaptioned | failed | skipped
        pa.field("text", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("created_at", pa.string()),
    ]
)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    url: str
    name: str  # output file name under samples/ (and the marker's stem)
    num_rows: int
    row_groups: list[tuple[int, int, int]]  # (row group, first row, rows)


def plan_inputs(patterns: list[str]) -> list[InputFile]:
    """Every input file (schema checked) with its row groups and a unique output name."""
    try:
        urls = list_inputs(patterns)
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e).replace("data.curated", "recaption.input", 1)) from e
    files, seen = [], Counter()
    for url in urls:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_schema(pf.schema_arrow, CURATED_SCHEMA, url)
            meta = pf.metadata
        groups, first = [], 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            groups.append((rg, first, n))
            first += n
        base = path.rsplit("/", 1)[-1]
        seen[base] += 1
        if seen[base] > 1:  # same file name in two input folders: tell them apart by URL
            digest = hashlib.sha1(url.encode()).hexdigest()[:8]
            base = f"{base.removesuffix('.parquet')}-{digest}.parquet"
        name = base
        files.append(InputFile(url, name, first, groups))
    return files


def read_unit(item: dict, spec_json: str) -> list[dict]:
    """One row group -> one row per sample: where it is, whether to caption it, its images."""
    spec = RecaptionSpec.model_validate_json(spec_json)
    unit = json.loads(item["unit"])
    fs, path = url_to_fs(unit["url"])
    with fs.open(path, "rb") as f:
        table = pq.ParquetFile(f).read_row_group(unit["row_group"], columns=["kind", "source"])
        kinds, sources = table.column("kind").to_pylist(), table.column("source").to_pylist()
        wanted = [
            kind == "caption" and (spec.sources is None or source in spec.sources)
            for kind, source in zip(kinds, sources, strict=True)
        ]
        images: list = [None] * len(kinds)
        if any(wanted):
            f.seek(0)
            col = pq.ParquetFile(f).read_row_group(unit["row_group"], columns=["images"])
            images = col.column("images").to_pylist()
    rows = []
    for i, (kind, source) in enumerate(zip(kinds, sources, strict=True)):
        skip = None
        if kind != "caption":
            skip = "kind_not_caption"
        elif spec.sources is not None and source not in spec.sources:
            skip = "source_not_selected"
        rows.append(
            {
                "input_file": unit["url"],
                "input_row": unit["first_row"] + i,
                "skip": skip,
                "images": [img.get("bytes") for img in (images[i] or []) if img]
                if wanted[i]
                else [],
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


class RecaptionStage:
    """Loads the captioner once (``__init__``); ``__call__`` captions one batch of rows.

    Returns one result per input row, never raising for a bad image or a failed generation
    (those come back as ``status == "failed"`` with a reason)."""

    def __init__(self, spec_json: str, crash_once: str | None = None):
        self.spec = RecaptionSpec.model_validate_json(spec_json)
        self.captioner = make_captioner(self.spec)
        self.crash_once = crash_once

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        self._maybe_crash()
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["skip"] is None and r["images"]]
        captions = self.captioner.caption([rows[i]["images"] for i in todo])
        by_row: dict[int, Caption] = dict(zip(todo, captions, strict=True))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out: dict[str, list] = {name: [] for name in RESULT_SCHEMA.names}
        for i, row in enumerate(rows):
            if row["skip"] is not None:
                status, cap = "skipped", Caption.failed(row["skip"], "")
            elif i not in by_row:
                status, cap = "failed", Caption.failed("missing_field", "images")
            else:
                cap = by_row[i]
                status = "recaptioned" if cap.text is not None else "failed"
            out["input_file"].append(row["input_file"])
            out["input_row"].append(row["input_row"])
            out["status"].append(status)
            out["text"].append(cap.text)
            out["reason"].append(cap.reason)
            out["detail"].append(cap.detail or None)
            out["created_at"].append(now if status == "recaptioned" else None)
        return out

    def _maybe_crash(self) -> None:
        if self.crash_once and not os.path.exists(self.crash_once):
            with open(self.crash_once, "w") as f:
                f.write(str(os.getpid()))
            os._exit(17)


# ---------------------------------------------------------------------------------------------
# Writing one input file's output
# ---------------------------------------------------------------------------------------------


def provenance(spec: RecaptionSpec) -> dict:
    """The provenance of every caption this spec writes (``created_at`` set per row)."""
    return {
        "origin": "recaption",
        "backend": spec.backend,
        "model": spec.model,
        "prompt_template": spec.prompt,
        "prompt_sha256": spec.prompt_sha256(),
        "generation": spec.generation.to_json(),
        "created_at": None,
    }


def _origin(caption: dict) -> str:
    return ((caption.get("provenance") or {}).get("origin")) or "original"


def apply_policy(captions: list[dict] | None, new: dict, policy: str) -> list[dict]:
    """The row's captions after adding ``new`` (see :mod:`neo_data.manifest.recaption`)."""
    old = [c for c in (captions or []) if c is not None]
    if policy == "replace":
        return [new, *(c for c in old if _origin(c) != "recaption")]
    return [*old, new]  # keep_both, mix: the originals stay first; the newest recaption last


@dataclass
class FileDone:
    """The completion marker of one input file (``_work/<name>.json``)."""

    input: str
    output: str
    rows: int
    recaptioned: int
    failed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failures_file: str | None = None


def write_file(
    spec: RecaptionSpec, file: InputFile, results: dict[int, dict], root_fs, root: str
) -> FileDone:
    """Write ``samples/<name>`` (+ ``failures/<name>``), then the marker."""
    fs, path = url_to_fs(file.url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    old = (
        table.column("captions").to_pylist()
        if "captions" in table.schema.names
        else [None] * table.num_rows
    )
    captions, failures, counts = merge_results(spec, old, results)
    table = to_curated(table.drop_columns([n for n in ["captions"] if n in table.schema.names]))
    table = table.set_column(
        table.schema.get_field_index("captions"),
        CURATED_SCHEMA.field("captions"),
        pa.array(captions, type=pa.list_(CAPTION_TYPE)),
    )
    rg_size = (file.row_groups[0][2] if file.row_groups else 0) or None
    data = table_to_parquet_bytes(table, rg_size)
    atomic_write(root_fs, join(root, SAMPLES_DIR, file.name), data)
    failures_name = f"{FAILURES_DIR}/{file.name}"
    if failures:
        atomic_write(root_fs, join(root, failures_name), _failures_table(file, table, failures))
    elif root_fs.exists(join(root, failures_name)):  # left by an interrupted earlier attempt
        root_fs.rm(join(root, failures_name))
    marker = FileDone(
        input=file.url,
        output=f"{SAMPLES_DIR}/{file.name}",
        rows=file.num_rows,
        failures_file=failures_name if failures else None,
        **counts,
    )
    marker_path = join(root, WORK_DIR, file.name + ".json")
    atomic_write(root_fs, marker_path, json.dumps(asdict(marker)).encode())
    return marker


def merge_results(
    spec: RecaptionSpec, captions: list, results: dict[int, dict]
) -> tuple[list, list[tuple[int, dict]], dict]:
    """Captions after the policy, the failed rows, and the counts for the marker."""
    prov = provenance(spec)
    out, failures = list(captions), []
    failed, skipped, done = Counter(), Counter(), 0
    for i in range(len(out)):
        r = results[i]
        if r["status"] == "recaptioned":
            new = {"text": r["text"], "provenance": {**prov, "created_at": r["created_at"]}}
            out[i] = apply_policy(out[i], new, spec.policy)
            done += 1
        elif r["status"] == "skipped":
            skipped[r["reason"]] += 1
        else:
            failed[r["reason"]] += 1
            failures.append((i, r))
    counts = {"recaptioned": done, "failed": dict(failed), "skipped": dict(skipped)}
    return out, failures, counts


def to_curated(table: pa.Table) -> pa.Table:
    """The columns of CURATED_SCHEMA, in order, with its types and metadata (absent optional
    columns become nulls)."""
    cols = []
    for f in CURATED_SCHEMA:
        i = table.schema.get_field_index(f.name)
        cols.append(table.column(i).cast(f.type) if i >= 0 else pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=CURATED_SCHEMA)


def _failures_table(file: InputFile, table: pa.Table, failures: list[tuple[int, dict]]) -> bytes:
    rows = [i for i, _ in failures]
    lineage = table.select(["sample_id", "source", "url", "row"]).take(rows).to_pylist()
    out = [
        {
            **lin,
            "input_file": file.url,
            "input_row": i,
            "reason": r["reason"],
            "detail": r["detail"],
        }
        for lin, (i, r) in zip(lineage, failures, strict=True)
    ]
    return table_to_parquet_bytes(pa.Table.from_pylist(out, schema=REJECTED_SCHEMA))


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass
class RecaptionResult:
    output: str
    report: dict
    files_skipped: int  # finished by an earlier run


def run_recaption(manifest: Manifest) -> RecaptionResult:
    """Run (or resume) the recaption job of ``manifest``; returns its report."""
    spec = manifest.recaption
    if spec is None:
        raise ValueError("the manifest has no `recaption:` section")
    check_policy(spec, manifest.pack.caption_choice)
    t0 = time.perf_counter()
    output = spec.output.rstrip("/")
    fs, root = url_to_fs(output)
    _stamp(fs, root, spec)
    files = plan_inputs(spec.input)
    done = _finished(fs, root, files)
    pending = [f for f in files if f.name not in done]
    log.info("recaption: %d input files, %d already done", len(files), len(files) - len(pending))
    if pending:
        for marker in _caption(spec, pending, fs, root):
            done[marker.output.rsplit("/", 1)[-1]] = marker
            log.info(
                "recaption: %d/%d files done (%s: %d rows, %d recaptioned)",
                len(done),
                len(files),
                marker.output,
                marker.rows,
                marker.recaptioned,
            )
    report = make_report(manifest, [done[f.name] for f in files], time.perf_counter() - t0)
    atomic_write(fs, join(root, REPORT_NAME), json.dumps(report, indent=1).encode())
    return RecaptionResult(output, report, files_skipped=len(files) - len(pending))


def _stamp(fs, root: str, spec: RecaptionSpec) -> None:
    """Resume only work done with the same model, prompt, settings and policy."""
    want = spec.work_hash()
    got = claim_work_dir(fs, join(root, WORK_DIR), SPEC_STAMP, want)
    if got is not None:
        raise OutputConflict(
            f"{root}/{WORK_DIR} holds recaptions made with other settings (sha256 "
            f"{got[:12]}, this spec {want[:12]}); choose a new recaption.output"
        )


def _finished(fs, root: str, files: list[InputFile]) -> dict[str, FileDone]:
    done = {}
    for f in files:
        marker = join(root, WORK_DIR, f.name + ".json")
        if fs.exists(marker):
            with fs.open(marker, "rb") as fh:
                done[f.name] = FileDone(**json.loads(fh.read()))
    return done


def _caption(spec: RecaptionSpec, pending: list[InputFile], fs, root: str):
    """Yield each input file's marker as soon as all its rows are captioned and written."""
    import ray

    spec_json = spec.model_dump_json()
    units = [
        {"unit": json.dumps({"url": f.url, "row_group": rg, "first_row": first})}
        for f in pending
        for rg, first, _ in f.row_groups
    ]
    by_url = {f.url: f for f in pending}
    results: dict[str, dict[int, dict]] = {f.url: {} for f in pending}
    for f in pending:
        if f.num_rows == 0:
            yield write_file(spec, f, {}, fs, root)
    if not any(f.num_rows for f in pending):
        return
    ds = (
        ray.data.from_items(units, override_num_blocks=max(1, len(units)))
        .flat_map(read_unit, fn_args=(spec_json,), num_cpus=0.5)
        .map_batches(
            RecaptionStage,
            fn_constructor_args=(spec_json, os.environ.get(CRASH_ONCE_ENV)),
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=spec.pool_size),
            num_gpus=spec.gpus_per_actor,
            num_cpus=spec.num_cpus,
            # Ray Data's actor pools restart a dead actor and retry its batch by default
            # (max_restarts=-1, max_task_retries=-1); passing them is deprecated in Ray 2.60.
        )
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            url = row["input_file"]
            results[url][row["input_row"]] = row
            if len(results[url]) == by_url[url].num_rows:
                yield write_file(spec, by_url[url], results.pop(url), fs, root)


def make_report(manifest: Manifest, markers: list[FileDone], seconds: float) -> dict:
    spec = manifest.recaption
    assert spec is not None
    failed, skipped = Counter(), Counter()
    for m in markers:
        failed.update(m.failed)
        skipped.update(m.skipped)
    rows = sum(m.rows for m in markers)
    recaptioned = sum(m.recaptioned for m in markers)
    if rows != recaptioned + sum(failed.values()) + sum(skipped.values()):
        raise AssertionError(f"recaption counts do not add up: {rows} rows in, markers {markers}")
    return {
        "format": "neo.recaption.report",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "manifest": {"name": manifest.name, "sha256": manifest.content_hash()},
        "provenance": {k: v for k, v in provenance(spec).items() if k != "created_at"},
        "policy": spec.policy,
        "packing": {
            "caption_choice": manifest.pack.caption_choice,
            "recaption_ratio": manifest.pack.recaption_ratio,
        },
        "totals": {
            "rows": rows,
            "recaptioned": recaptioned,
            "failed": dict(sorted(failed.items())),
            "skipped": dict(sorted(skipped.items())),
        },
        "seconds": round(seconds, 3),
        "files": [asdict(m) for m in markers],
    }


def format_summary(report: dict) -> str:
    t = report["totals"]
    lines = [
        f"rows        {t['rows']}",
        f"recaptioned {t['recaptioned']}",
        *(f"failed      {n:>6}  {reason}" for reason, n in t["failed"].items()),
        *(f"skipped     {n:>6}  {reason}" for reason, n in t["skipped"].items()),
        f"policy      {report['policy']} (pack.caption_choice "
        f"{report['packing']['caption_choice']})",
        f"seconds     {report['seconds']}",
    ]
    return "\n".join(lines)
