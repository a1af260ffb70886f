"""Reading curation sources (Parquet, CSV, JSONL; local or any fsspec URL) into plain rows.

A source is one or more files; its rows are numbered across its files in sorted path order
(``row`` in the curated schema). Cells stay raw: CSV cells arrive as bytes so that a caption
that is not UTF-8 is rejected row by row (``caption_not_utf8``) instead of failing the file; a
JSONL line that is not valid JSON becomes a row with ``_error`` set (reason ``bad_row``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from neo_data.format.storage import list_inputs, url_to_fs
from neo_data.manifest.curate import FORMAT_BY_SUFFIX, SourceSpec, source_format

ERROR_KEY = "_error"


@dataclass(frozen=True)
class SourceFile:
    url: str
    format: str
    num_rows: int
    first_row: int  # row of the source where this file starts


def list_source_files(source: SourceSpec) -> list[str]:
    """Expand the source's files, directories (every file of its format below) and globs."""
    return list_inputs(
        source.all_paths(),
        f"curate.sources[{source.name}]",
        keep=lambda path: _readable(source, path),
        noun="file",
    )


def _readable(source: SourceSpec, path: str) -> bool:
    """A file of a source directory: of the source's format by its extension (or, with an
    explicit ``format``, without a known extension, e.g. ``part-00000``); never a hidden or
    ``_``-prefixed marker file."""
    name = path.rsplit("/", 1)[-1]
    if name.startswith((".", "_")):
        return False
    by_suffix = FORMAT_BY_SUFFIX.get(PurePosixPath(name).suffix.lower())
    if source.format is None:
        return by_suffix is not None
    return by_suffix in (None, source.format)


def plan_source_files(source: SourceSpec) -> list[SourceFile]:
    """Every file of the source with its row count (Parquet: from the footer)."""
    files, first = [], 0
    for url in list_source_files(source):
        fmt = source_format(source, url)
        if fmt == "parquet":
            fs, path = url_to_fs(url)
            with fs.open(path, "rb") as f:
                n = pq.ParquetFile(f).metadata.num_rows
        else:
            n = len(read_rows(url, fmt))
        files.append(SourceFile(url, fmt, n, first))
        first += n
    return files


def read_rows(url: str, fmt: str, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
    """Rows ``[start, stop)`` of one file as dicts of raw Python values."""
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        if fmt == "jsonl":
            return _jsonl_rows(f.read(), url)[start:stop]
        if fmt == "csv":
            table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(check_utf8=False))
            table = _strings_as_binary(table)
        else:
            table, start, stop = _parquet_rows(pq.ParquetFile(f), start, stop)
    stop = table.num_rows if stop is None else min(stop, table.num_rows)
    return table.slice(start, max(0, stop - start)).to_pylist()


def _parquet_rows(pf: pq.ParquetFile, start: int, stop: int | None) -> tuple[pa.Table, int, int]:
    """Only the row groups that overlap ``[start, stop)`` (a unit of a big file reads its part);
    returns them with ``start``/``stop`` relative to the first group read."""
    meta = pf.metadata
    stop = meta.num_rows if stop is None else stop
    groups, first, offset = [], None, 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        if offset < stop and offset + n > start:
            groups.append(rg)
            first = offset if first is None else first
        offset += n
    if not groups:
        return pf.schema_arrow.empty_table(), 0, 0
    return pf.read_row_groups(groups), start - first, stop - first


def _strings_as_binary(table: pa.Table) -> pa.Table:
    """CSV text columns as bytes: pyarrow did not check their UTF-8, the filters will."""
    cols = [c.cast(pa.binary()) if pa.types.is_string(c.type) else c for c in table.itercolumns()]
    return pa.Table.from_arrays(cols, names=table.column_names)


def _jsonl_rows(data: bytes, url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            rows.append({ERROR_KEY: f"{url}:{lineno}: not valid JSON ({e})"[:300]})
            continue
        if not isinstance(value, dict):
            rows.append({ERROR_KEY: f"{url}:{lineno}: a JSON object per line expected"})
            continue
        rows.append(value)
    return rows
