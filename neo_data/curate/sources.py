"""Reading curation sources (Parquet, CSV, JSONL; local or any fsspec URL) into plain rows.

A source is one or more files; its rows are numbered across its files in sorted path order
(``row`` in the curated schema). Cells stay raw: CSV cells arrive as bytes so that a caption
that is not UTF-8 is rejected row by row (``caption_not_utf8``) instead of failing the file.
A line no row can be made of becomes a row with ``_error`` set (reason ``bad_row``, the detail
names ``file:line``): a JSONL line that is not a JSON object, a CSV record with another number
of fields than the header. Both formats skip a UTF-8 byte order mark and blank lines, and read
LF, CRLF and CR line ends alike; an empty file has no rows.

CSV is parsed with Python's ``csv`` module (RFC 4180 quoting) over the bytes decoded as
Latin-1 -- a one-to-one map, so each cell is re-encoded to exactly its input bytes -- rather
than pyarrow's reader, which stops the whole file at the first malformed line. Cells are never
converted to numbers: what is not the URL, caption, conversation or text is kept in ``meta``
as the text it was.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.format.storage import file_identity, list_inputs, url_to_fs
from neo_data.manifest.curate import FORMAT_BY_SUFFIX, SourceSpec, source_format

ERROR_KEY = "_error"


@dataclass(frozen=True)
class SourceFile:
    url: str
    format: str
    num_rows: int
    first_row: int  # row of the source where this file starts
    size: int  # bytes, and the store's version tag: what a resumed run checks is unchanged
    version: str | None


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
        fs, path = url_to_fs(url)
        identity = file_identity(fs, path)
        if fmt == "parquet":
            with fs.open(path, "rb") as f:
                n = pq.ParquetFile(f).metadata.num_rows
        elif fmt == "csv":
            with fs.open(path, "rb") as f:
                n = count_csv_rows(f.read(), url)
        else:
            n = len(read_rows(url, fmt))
        files.append(SourceFile(url, fmt, n, first, identity["size"], identity["version"]))
        first += n
    return files


def read_rows(url: str, fmt: str, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
    """Rows ``[start, stop)`` of one file as dicts of raw Python values."""
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        if fmt == "jsonl":
            return _jsonl_rows(f.read(), url)[start:stop]
        if fmt == "csv":
            return _csv_rows(f.read(), url, start, stop)
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


def _csv_rows(data: bytes, url: str, start: int = 0, stop: int | None = None) -> list[dict]:
    """Records ``[start, stop)`` of a CSV file as dicts of bytes cells, a bad record as an error
    row; the parse stops at ``stop`` and builds no dict before ``start`` (a unit of a big file
    pays for the rows up to its own, not for every row)."""
    rows: list[dict[str, Any]] = []
    records = _csv_records(data, url)
    names = next(records)
    for i, record in enumerate(records):
        if stop is not None and i >= stop:
            break
        if i < start:
            continue
        if isinstance(record, str):
            rows.append({ERROR_KEY: record})
        else:
            rows.append({n: cell.encode("latin-1") for n, cell in zip(names, record, strict=True)})
    return rows


def _csv_records(data: bytes, url: str):
    """The header's names first, then each row: its cells (Latin-1 text of the input bytes) or
    the error message of a record no row can be made of."""
    text = data.removeprefix(_BOM).decode("latin-1")
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    try:
        header = next(reader, [])
    except csv.Error as e:
        yield []
        yield f"{url}:1: the header is not CSV ({e})"[:300]
        return
    names = [h.encode("latin-1").decode("utf-8", errors="replace").strip() for h in header]
    yield names
    line = reader.line_num
    while True:
        first = line + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = reader.line_num
            yield f"{url}:{first}: not CSV ({e})"[:300]
            continue
        line = reader.line_num
        if not record:  # a blank line
            continue
        if len(record) != len(names):
            yield f"{url}:{first}: {len(record)} fields, the header has {len(names)}"
            continue
        yield record


def count_csv_rows(data: bytes, url: str) -> int:
    """Rows of a CSV file (records and bad records), without building them."""
    return sum(1 for _ in _csv_records(data, url)) - 1


_BOM = b"\xef\xbb\xbf"
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a caption may be long: it is
# the filters' caption_max_chars that rejects it, not the parser


def _jsonl_rows(data: bytes, url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(data.removeprefix(_BOM).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            rows.append({ERROR_KEY: f"{url}:{lineno}: not valid JSON ({e})"[:300]})
            continue
        if not isinstance(value, dict):
            rows.append({ERROR_KEY: f"{url}:{lineno}: a JSON object per line expected"})
            continue
        rows.append(value)
    return rows
