"""The one fsspec layer: filesystems for URLs, input expansion, atomic writes, the Parquet
writer, and the resume-or-refuse guard of a job's output.

Every job reads and writes through these functions, so a local path and ``s3://bucket/prefix``
behave the same: an object appears whole or not at all, and a rerun finds the stamp its
unfinished work was made with.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.format.schema import WORK_DIR


def url_to_fs(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for a local path or URL (``s3://`` uses the usual AWS settings;
    ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` select a non-AWS endpoint such as MinIO)."""
    return fsspec.core.url_to_fs(url, **storage_options)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def is_parquet(path: str) -> bool:
    return path.endswith(".parquet")


def list_inputs(
    patterns: Iterable[str],
    field: str = "input",
    *,
    keep: Callable[[str], bool] = is_parquet,
    noun: str = "Parquet file",
) -> list[str]:
    """Expand files, directories and globs into sorted, unique URLs.

    A directory contributes every file below it that ``keep`` accepts (by default ``*.parquet``);
    a glob contributes what it matches. A pattern that does not exist or matches nothing raises
    :class:`FileNotFoundError` naming ``field`` (the manifest field the patterns come from) and
    the pattern; ``noun`` says what a match would have been.
    """
    out: list[str] = []
    for pattern in patterns:
        fs, path = url_to_fs(pattern)
        proto = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
        if any(c in path for c in "*?["):
            found = fs.glob(path)
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if keep(p)]
        elif fs.exists(path):
            found = [path]
        else:
            raise FileNotFoundError(f"{field}: {pattern!r} does not exist")
        if not found:
            raise FileNotFoundError(f"{field}: {pattern!r} matches no {noun}")
        out.extend(proto + p if proto and not p.startswith(proto) else p for p in sorted(found))
    return sorted(set(out))


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Make ``path`` appear complete or not at all.

    Local: write a temporary file beside it (``<path>.tmp-<32 hex>``), fsync it, rename it
    (atomic on POSIX), fsync the directory -- without the syncs a power cut after the rename can
    leave an empty or missing file that a rerun trusts. Object stores: one PUT (or a multipart
    upload completed at close) -- the object is visible only when whole.
    """
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        local, local_parent = fs._strip_protocol(path), fs._strip_protocol(parent)
        os.makedirs(local_parent, exist_ok=True)
        tmp = f"{local}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, local)
            dir_fd = os.open(local_parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def list_names(fs, base: str, suffix: str = ".parquet") -> set[str]:
    """Names of the files ending in ``suffix`` in the folder ``base`` (none if it is absent)."""
    fs.invalidate_cache(base)
    try:
        listing = fs.ls(base, detail=False)
    except FileNotFoundError:
        return set()
    finally:
        # object-store listings are cached: a stale one would hide files the tasks write next
        fs.invalidate_cache(base)
    names = {p.rsplit("/", 1)[-1] for p in listing}
    return {n for n in names if n.endswith(suffix)}


_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}$")


def remove_stale_temporaries(
    fs: fsspec.AbstractFileSystem, root: str, folders: Iterable[str]
) -> list[str]:
    """Delete the temporary files :func:`atomic_write` left below ``root/<folder>`` when its
    process was killed (``*.tmp-<32 hex>``: only names it makes, only in the folders a job owns);
    return their paths. A no-op on object stores, which have none."""
    if not is_local(fs):
        return []
    removed = []
    for folder in folders:
        base = join(root, folder)
        if not fs.isdir(base):
            continue
        for path in sorted(fs.find(base)):
            if _TEMPORARY.search(path):
                fs.rm(path)
                removed.append(path)
    return removed


def table_to_parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """The Parquet writer of every job: zstd on every column except image bytes (already
    JPEG/PNG/WebP, kept as they are), dictionary encoding on the low-cardinality strings, and a
    CRC-32 on every page (readers pass ``page_checksum_verification=True``, so a damaged page
    -- a flipped bit in pixels or tokens -- fails its read instead of training silently)."""
    buf = io.BytesIO()
    compression = {
        path: "none" if field.name == "images" and pa.types.is_binary(leaf) else "zstd"
        for field in table.schema
        for path, leaf in _leaves(field.type, field.name)
    }
    pq.write_table(
        table,
        buf,
        compression=compression,
        row_group_size=row_group_size,
        use_dictionary=[n for n in _DICTIONARY_COLUMNS if n in table.schema.names],
        write_page_checksum=True,
    )
    return buf.getvalue()


_DICTIONARY_COLUMNS = ("bucket", "source", "kind", "stage", "reason")


def _leaves(t: pa.DataType, path: str) -> list[tuple[str, pa.DataType]]:
    """Parquet leaf column paths of a field with their types (per-column options are keyed by
    the paths)."""
    if pa.types.is_list(t):
        return _leaves(t.value_type, f"{path}.list.element")
    if pa.types.is_struct(t):
        return [leaf for f in t for leaf in _leaves(f.type, f"{path}.{f.name}")]
    return [(path, t)]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OutputConflict(RuntimeError):
    """An output holds work made with other settings: resuming it would mix the two."""


def resume_or_refuse(
    output: str,
    digest: str,
    *,
    stamp: str,
    made_with: str,
    field: str,
    commit: tuple[str, Callable[[dict], str | None]] | None = None,
) -> dict | None:
    """Decide how a job with settings ``digest`` may use ``output`` (its URL).

    * ``commit`` is ``(name, digest_of)``: when ``output/<name>`` exists (the JSON the job writes
      last: ``index.json``, ``report.json``), return it if ``digest_of`` it is ``digest`` (the
      output is complete; the caller does nothing), else refuse;
    * ``output/_work/<stamp>`` holds another digest: refuse (the work there was made with other
      settings);
    * otherwise stamp ``_work/<stamp>`` with ``digest`` and return None (the caller runs,
      resuming whatever work the stamp covers).

    A refusal is :class:`OutputConflict`, saying what the existing work was ``made_with``
    (e.g. "another manifest") and which manifest ``field`` to change.
    """
    fs, root = url_to_fs(output)
    if commit is not None and fs.exists(commit_path := join(root, commit[0])):
        with fs.open(commit_path, "rb") as f:
            doc = json.load(f)
        old = commit[1](doc)
        if old == digest:
            return doc
        raise OutputConflict(
            f"{output} already holds output made with {made_with} (sha256 {(old or '?')[:12]}, "
            f"this one {digest[:12]}); choose a new {field} or delete the old one"
        )
    old = _claim_work_dir(fs, join(root, WORK_DIR), stamp, digest)
    if old is not None:
        raise OutputConflict(
            f"{output}/{WORK_DIR} holds work made with {made_with} (sha256 "
            f"{old[:12]}, this one {digest[:12]}); delete it or choose a new {field}"
        )
    return None


def _claim_work_dir(
    fs: fsspec.AbstractFileSystem, work_dir: str, name: str, digest: str
) -> str | None:
    """Stamp ``work_dir/name`` with ``digest`` (the settings a job's unfinished work was made
    with) if it is not stamped yet. Returns the other digest when the stamp differs -- the caller
    refuses to resume -- else None."""
    stamp = join(work_dir, name)
    if fs.exists(stamp):
        with fs.open(stamp, "rb") as f:
            old = f.read().decode().strip()
        return old if old != digest else None
    atomic_write(fs, stamp, digest.encode())
    return None


def file_identity(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """What a job's plan records of an input file to notice that it changed: its size and the
    store's version tag (ETag or generation on object stores, mtime on a local disk)."""
    info = fs.info(path)
    version = next(
        (str(info[k]) for k in ("ETag", "etag", "generation", "mtime", "LastModified")
         if info.get(k) is not None),
        None,
    )  # fmt: skip
    return {"size": int(info["size"]), "version": version}
