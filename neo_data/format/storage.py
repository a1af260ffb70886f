"""The one fsspec layer: filesystems for URLs, atomic writes, the Parquet writer, work-dir stamps.

Every job reads and writes through these functions, so a local path and ``s3://bucket/prefix``
behave the same: an object appears whole or not at all, and a rerun finds the stamp its
unfinished work was made with.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def url_to_fs(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path for a local path or URL (``s3://`` uses the usual AWS settings;
    ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` select a non-AWS endpoint such as MinIO)."""
    return fsspec.core.url_to_fs(url, **storage_options)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Make ``path`` appear complete or not at all.

    Local: write a temporary file beside it, then rename (atomic on POSIX). Object stores: one
    PUT (or a multipart upload completed at close) -- the object is visible only when whole.
    """
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def table_to_parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """Parquet with zstd everywhere except on image bytes (already JPEG/PNG/WebP)."""
    buf = io.BytesIO()
    compression = {_leaf_path(f): "zstd" for f in table.schema}
    if "images" in table.schema.names:
        compression[_leaf_path(table.schema.field("images"))] = "none"
    pq.write_table(
        table,
        buf,
        compression=compression,
        row_group_size=row_group_size,
        use_dictionary=[n for n in ("bucket", "source", "reason") if n in table.schema.names],
    )
    return buf.getvalue()


def _leaf_path(field: pa.Field) -> str:
    """The Parquet column path of a flat or list field (per-column options are keyed by it)."""
    return f"{field.name}.list.element" if pa.types.is_list(field.type) else field.name


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def claim_work_dir(
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
