"""Packed shards on any fsspec filesystem: atomic writes, the index, reading and verifying.

Layout of a packed dataset (see ``FORMAT.md``)::

    <root>/index.json                          written last, after every shard
    <root>/shards/<bucket>/shard-000000.parquet  one row per pack, one row group per pack
    <root>/rejected/<unit>.parquet             rows the packer dropped, with the reason
    <root>/_work/                              resumable intermediate state (removable)

Parquet rather than Arrow IPC: a footer lets a reader fetch one pack (one row group) from an
object store with a range request, token columns compress 3-5x with zstd, and every tool of the
field (pyarrow, ``datasets``, DuckDB, Spark) reads it without our code. Image bytes are already
compressed, so that column is stored uncompressed.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neo_data.schema import (
    INDEX_NAME,
    PACKED_SCHEMA,
    PACKED_SCHEMA_NAME,
    PACKED_SCHEMA_VERSION,
    SchemaMismatch,
    check_schema,
)

# ---------------------------------------------------------------------------------------------
# fsspec helpers
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Shards and the index
# ---------------------------------------------------------------------------------------------


def packs_to_table(rows: list[dict]) -> pa.Table:
    """Shard table from :func:`neo_data.packing.build_pack` rows, in the packed schema."""
    cols = {f.name: [r[f.name] for r in rows] for f in PACKED_SCHEMA}
    return pa.Table.from_pydict(cols, schema=PACKED_SCHEMA)


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the dataset root
    bucket: str
    rows: int
    packs: int
    samples: int
    text_samples: int
    tokens: int
    image_tokens: int
    supervised_tokens: int
    images: int
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: str, bucket: str, table: pa.Table, data: bytes) -> ShardInfo:
        def total(col: str) -> int:
            return int(pc.sum(table[col]).as_py() or 0)

        text = pc.list_flatten(table["sample_text_only"])
        return cls(
            path=path,
            bucket=bucket,
            rows=table.num_rows,
            packs=table.num_rows,
            samples=len(text),
            text_samples=int(pc.sum(text.cast(pa.int64())).as_py() or 0),
            tokens=total("num_tokens"),
            image_tokens=total("num_image_tokens"),
            supervised_tokens=total("num_supervised"),
            images=len(pc.list_flatten(table["images"])),
            bytes=len(data),
            sha256=sha256_hex(data),
        )


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


def write_shard(
    fs: fsspec.AbstractFileSystem, root: str, rel: str, bucket: str, rows: list[dict]
) -> ShardInfo:
    """Write one shard atomically (one row group per pack) and describe it for the index."""
    table = packs_to_table(rows)
    data = table_to_parquet_bytes(table, row_group_size=1)
    atomic_write(fs, join(root, rel), data)
    return ShardInfo.of(rel, bucket, table, data)


def write_index(fs: fsspec.AbstractFileSystem, root: str, index: dict) -> None:
    """The index is the commit point of a dataset: write it only after every shard exists."""
    missing = [s["path"] for s in index["shards"] if not fs.exists(join(root, s["path"]))]
    if missing:
        raise RuntimeError(
            f"refusing to write the index: {len(missing)} shards missing, e.g. {missing[0]}"
        )
    atomic_write(fs, join(root, INDEX_NAME), json.dumps(index, indent=1, sort_keys=False).encode())


class PackedDataset:
    """A packed dataset opened from its index (local path or ``s3://...``)."""

    def __init__(self, url: str, **storage_options: Any):
        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url, **storage_options)
        index_path = join(self.root, INDEX_NAME)
        if not self.fs.exists(index_path):
            raise FileNotFoundError(
                f"{url}: no {INDEX_NAME} (not a packed dataset, or its pack job has not finished)"
            )
        with self.fs.open(index_path, "rb") as f:
            self.index = json.load(f)
        if self.index.get("format") != PACKED_SCHEMA_NAME:
            raise SchemaMismatch(
                f"{url}/{INDEX_NAME}: format {self.index.get('format')!r}, expected {PACKED_SCHEMA_NAME}"
            )
        if self.index.get("schema_version") != PACKED_SCHEMA_VERSION:
            raise SchemaMismatch(
                f"{url}/{INDEX_NAME}: schema version {self.index.get('schema_version')}, "
                f"this neo reads {PACKED_SCHEMA_VERSION}"
            )

    @property
    def shards(self) -> list[dict]:
        return self.index["shards"]

    @property
    def buckets(self) -> list[str]:
        return [b["name"] for b in self.index["buckets"]]

    def read_shard(self, i: int, columns: list[str] | None = None) -> pa.Table:
        path = join(self.root, self.shards[i]["path"])
        with self.fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=columns)
        if columns is None:
            check_schema(table.schema, PACKED_SCHEMA, path)
        return table

    def read_pack(self, shard: int, pack: int) -> dict:
        """One pack as a dict of Python values, reading only its row group."""
        path = join(self.root, self.shards[shard]["path"])
        with self.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            if not 0 <= pack < pf.metadata.num_row_groups:
                raise IndexError(
                    f"{path}: pack {pack} out of range 0..{pf.metadata.num_row_groups - 1}"
                )
            return pf.read_row_group(pack).to_pylist()[0]

    def iter_packs(self, buckets: list[str] | None = None) -> Iterator[dict]:
        for i, s in enumerate(self.shards):
            if buckets is None or s["bucket"] in buckets:
                yield from self.read_shard(i).to_pylist()

    def verify(self) -> list[str]:
        """Check every shard against the index's size and sha256; return the problems found."""
        problems = []
        for s in self.shards:
            path = join(self.root, s["path"])
            if not self.fs.exists(path):
                problems.append(f"{s['path']}: missing")
                continue
            with self.fs.open(path, "rb") as f:
                data = f.read()
            if len(data) != s["bytes"]:
                problems.append(f"{s['path']}: {len(data)} bytes, index says {s['bytes']}")
            elif sha256_hex(data) != s["sha256"]:
                problems.append(f"{s['path']}: sha256 differs from the index")
        return problems
