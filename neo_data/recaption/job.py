"""The recaption job: curated samples -> the same samples with a new caption beside the original.

Layout of ``recaption.output``::

    <output>/
    ├── samples/<input name>.parquet   every input row, curated schema, new captions added by
    │                                  the policy (``neo_data.manifest.recaption``); one file
    │                                  per input file (:mod:`neo_data.recaption.output`)
    ├── failures/<input name>.parquet  rows whose image or generation failed (REJECTED_SCHEMA:
    │                                  lineage, ``reason``, ``detail``); these rows are in
    │                                  samples/ too, unchanged
    ├── report.json                    counts (every input row is recaptioned, failed or
    │                                  skipped, by reason), provenance, timing; written last,
    │                                  once the markers' counts are found again in the output
    │                                  files (:mod:`neo_data.recaption.verify`,
    │                                  :mod:`neo_data.recaption.report`)
    └── _work/                         spec.sha256 + one marker per finished input file,
                                       written after its output: a rerun skips those files
                                       (temporaries of a killed run are swept at the start)

On Ray Data: each input row group is read by a task (only the columns the stage needs), rows go
in batches of ``batch_size`` through ``pool_size`` actors of :class:`RecaptionStage` (the
captioner is loaded once in ``__init__``; ``num_gpus`` per actor); a crashed actor is restarted
by Ray and its batch retried (Ray Data's actor-pool defaults). The driver receives only the
results (text, reason), and writes an input file's output as soon as all its rows are back:
image bytes never pass through a stage that does not need them, and a crash loses at most
unfinished files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.format.schema import CURATED_SCHEMA, WORK_DIR, check_schema
from neo_data.format.storage import (
    OutputConflict,
    atomic_write,
    file_identity,
    join,
    list_inputs,
    remove_stale_temporaries,
    resume_or_refuse,
    url_to_fs,
)
from neo_data.manifest import Manifest
from neo_data.manifest.recaption import RecaptionSpec, check_policy
from neo_data.recaption.captioners import Caption, make_captioner
from neo_data.recaption.output import (
    FAILURES_DIR,
    SAMPLES_DIR,
    FileDone,
    InputFile,
    caption_time,
    write_file,
)
from neo_data.recaption.report import REPORT_NAME, make_report
from neo_data.recaption.verify import recount, skip_reason, verify_markers

log = logging.getLogger(__name__)

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


def plan_inputs(patterns: list[str]) -> list[InputFile]:
    """Every input file (schema checked) with its row groups and a unique output name."""
    files, seen = [], Counter()
    for url in list_inputs(patterns, "recaption.input"):
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
        identity = file_identity(fs, path)
        files.append(InputFile(url, name, first, groups, identity["size"], identity["version"]))
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
            skip_reason(kind, source, spec) is None
            for kind, source in zip(kinds, sources, strict=True)
        ]
        images: list = [None] * len(kinds)
        if any(wanted):
            f.seek(0)
            col = pq.ParquetFile(f).read_row_group(unit["row_group"], columns=["images"])
            images = col.column("images").to_pylist()
    rows = []
    for i, (kind, source) in enumerate(zip(kinds, sources, strict=True)):
        rows.append(
            {
                "input_file": unit["url"],
                "input_row": unit["first_row"] + i,
                "skip": skip_reason(kind, source, spec),
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
        now = caption_time()
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
    # Resume only work done with the same model, prompt, settings and policy.
    resume_or_refuse(
        output,
        spec.work_hash(),
        stamp=SPEC_STAMP,
        made_with="other settings",
        field="recaption.output",
    )
    # files a killed run was writing (atomic_write's temporaries; the job owns these folders)
    remove_stale_temporaries(fs, root, [SAMPLES_DIR, FAILURES_DIR, WORK_DIR])
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
    markers = [done[f.name] for f in files]
    # the markers' counts must be what the outputs hold, counted again from the files
    verify_markers(spec, markers, recount(fs, root, spec, files))
    report = make_report(manifest, markers, time.perf_counter() - t0)
    atomic_write(fs, join(root, REPORT_NAME), json.dumps(report, indent=1).encode())
    return RecaptionResult(output, report, files_skipped=len(files) - len(pending))


def _finished(fs, root: str, files: list[InputFile]) -> dict[str, FileDone]:
    """The input files finished by an earlier run: their marker must cover that very file (the
    same URL, rows, size and version), else the rerun is refused -- markers are found by output
    name, and a changed input or a new folder listed first would reuse one for other rows."""
    done = {}
    for f in files:
        marker = join(root, WORK_DIR, f.name + ".json")
        if fs.exists(marker):
            with fs.open(marker, "rb") as fh:
                m = FileDone(**json.loads(fh.read()))
            then = (m.input, m.rows, m.input_size, m.input_version)
            now = (f.url, f.num_rows, f.size, f.version)
            if m.input_size is None:  # a marker from before sizes were recorded
                then, now = then[:2], now[:2]
            if then != now:
                raise OutputConflict(
                    f"{marker} covers input {m.input} ({m.rows} rows, size {m.input_size}, "
                    f"version {m.input_version}), but {f.name} is now {f.url} ({f.num_rows} "
                    f"rows, size {f.size}, version {f.version}): the inputs changed since this "
                    "output was started; choose a new recaption.output, or delete it to start over"
                )
            done[f.name] = m
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
