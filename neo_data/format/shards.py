"""Packed shards on any fsspec filesystem: writing them and the index, reading and verifying.

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

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neo_data.format.schema import (
    INDEX_NAME,
    PACKED_SCHEMA,
    PACKED_SCHEMA_NAME,
    PACKED_SCHEMA_VERSION,
    SchemaMismatch,
    check_schema,
)
from neo_data.format.storage import (
    atomic_write,
    join,
    sha256_hex,
    table_to_parquet_bytes,
    url_to_fs,
)


def packs_to_table(rows: list[dict]) -> pa.Table:
    """Shard table from :func:`neo_data.pack.packing.build_pack` rows, in the packed schema."""
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
