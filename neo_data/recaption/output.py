"""Writing one input file's recaptioned output: the caption policy, the provenance every new
caption carries, the failures file and the file's completion marker (written last)."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.format.schema import CAPTION_TYPE, CURATED_SCHEMA, REJECTED_SCHEMA, WORK_DIR
from neo_data.format.storage import atomic_write, join, table_to_parquet_bytes, url_to_fs
from neo_data.manifest.recaption import RecaptionSpec

SAMPLES_DIR = "samples"
FAILURES_DIR = "failures"


@dataclass(frozen=True)
class InputFile:
    url: str
    name: str  # output file name under samples/ (and the marker's stem)
    num_rows: int
    row_groups: list[tuple[int, int, int]]  # (row group, first row, rows)
    size: int | None = None  # bytes and the store's version tag when planned: a marker of
    version: str | None = None  # another size or version is refused on resume


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


def caption_time() -> str:
    """``created_at`` of the captions made now: UTC, ISO 8601, to the second. When
    ``SOURCE_DATE_EPOCH`` is set (the reproducible-builds.org convention), that time instead, so
    two runs on the same inputs -- an interrupted one resumed and an uninterrupted one -- write
    the same bytes."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


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
    input_size: int | None = None  # what the marker covers (markers written before these
    input_version: str | None = None  # fields existed are checked on input and rows only)


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
        input_size=file.size,
        input_version=file.version,
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
