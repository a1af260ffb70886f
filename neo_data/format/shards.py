"""Packed shards on any fsspec filesystem: writing them and the index, reading and verifying.

Layout of a packed dataset (see ``FORMAT.md``)::

    <root>/index.json                          written last, after every shard
    <root>/shards/<bucket>/shard-00000-0000.parquet  one row per pack, one row group per pack
    <root>/rejected/<unit>.parquet             rows the packer dropped, with the reason
    <root>/_work/                              resumable intermediate state (removable)

Parquet by default: a footer lets a reader fetch one pack (one row group) from an object store
with a range request, token columns compress 3-5x with zstd, and every tool of the field
(pyarrow, ``datasets``, DuckDB, Spark) reads it without our code. Image bytes are already
compressed, so that column is stored uncompressed. ``pack.format: arrow`` writes Arrow IPC
shards instead (``.arrow``, :mod:`neo_data.format.ipc`), memory-mapped by local readers.

Every read is checked: Parquet pages carry a CRC-32 verified on read, IPC packs a CRC-32 in the
shard's head; a damaged shard raises :class:`~neo_data.format.schema.ShardCorrupt` naming the
file and the pack. ``PackedDataset.verify`` checks whole files against the index's sha256.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neo_data.format.ipc import IpcShard, table_to_ipc_bytes
from neo_data.format.schema import (
    IMAGE_COLUMNS,
    INDEX_NAME,
    PACKED_SCHEMA,
    PACKED_SCHEMA_NAME,
    PACKED_SCHEMA_VERSION,
    REJECTED_DIR,
    SHARD_FORMATS,
    SHARD_SUFFIXES,
    TOKEN_COLUMNS,
    SchemaMismatch,
    ShardCorrupt,
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
    format: str = "parquet"  # one of SHARD_FORMATS (an index without it is all Parquet)

    @classmethod
    def of(
        cls, path: str, bucket: str, table: pa.Table, data: bytes, fmt: str = "parquet"
    ) -> ShardInfo:
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
            format=fmt,
        )


def write_shard(
    fs: fsspec.AbstractFileSystem,
    root: str,
    rel: str,
    bucket: str,
    rows: list[dict],
    fmt: str = "parquet",
    arrow_compression: str | None = None,
) -> ShardInfo:
    """Write one shard of pack ``rows`` (:func:`~neo_data.pack.packing.build_pack`); see
    :func:`write_shard_table`."""
    return write_shard_table(fs, root, rel, bucket, packs_to_table(rows), fmt, arrow_compression)


def write_shard_table(
    fs: fsspec.AbstractFileSystem,
    root: str,
    rel: str,
    bucket: str,
    table: pa.Table,
    fmt: str = "parquet",
    arrow_compression: str | None = None,
) -> ShardInfo:
    """Write one shard atomically and describe it for the index: Parquet with one row group
    per pack, or (``fmt="arrow"``) an IPC stream with one record batch per pack, its buffers
    compressed with ``arrow_compression`` (None: zstd). ``rel`` is the shard's name
    (:func:`~neo_data.format.schema.shard_name`), ``table`` in the packed schema."""
    if fmt == "parquet":
        data = table_to_parquet_bytes(table, row_group_size=1)
    elif fmt == "arrow":
        data = table_to_ipc_bytes(table, arrow_compression)
    else:
        raise ValueError(f"shard format {fmt!r}: expected one of {SHARD_FORMATS}")
    atomic_write(fs, join(root, rel), data)
    return ShardInfo.of(rel, bucket, table, data, fmt)


class ParquetShard:
    """One Parquet shard opened for reading: its footer read (and its schema checked) once;
    packs by row group, every page checked against its CRC-32. Thread-safe."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self.fs, self.path = fs, path
        with fs.open(path, "rb") as f:
            try:
                self.metadata = pq.read_metadata(f)
            except (OSError, pa.ArrowException) as e:
                if not _is_damage(e):
                    raise
                raise ShardCorrupt(f"{path}: unreadable Parquet footer: {e}") from e
        check_schema(self.metadata.schema.to_arrow_schema(), PACKED_SCHEMA, path)

    @property
    def num_packs(self) -> int:
        return self.metadata.num_row_groups

    def read_pack(self, k: int) -> pa.Table:
        """Pack ``k`` as a one-row table (its row group: a few range reads)."""
        if not 0 <= k < self.num_packs:
            raise IndexError(f"{self.path}: pack {k} out of range 0..{self.num_packs - 1}")
        with self.fs.open(self.path, "rb") as f, self._checked(f"pack {k}"):
            pf = pq.ParquetFile(f, metadata=self.metadata, page_checksum_verification=True)
            return pf.read_row_group(k)

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path, "rb") as f, self._checked("a page"):
            pf = pq.ParquetFile(f, metadata=self.metadata, page_checksum_verification=True)
            return pf.read(columns=columns)

    @contextlib.contextmanager
    def _checked(self, what: str) -> Iterator[None]:
        """pyarrow's errors for a damaged file as :class:`ShardCorrupt`, naming the file."""
        try:
            yield
        except (OSError, pa.ArrowException) as e:
            if not _is_damage(e):
                raise
            raise ShardCorrupt(
                f"{self.path}: {what} fails its page checksum or does not decode (the file is "
                f"damaged; `neo shards verify` checks every shard against the index): {e}"
            ) from e


def check_lengths(table: pa.Table, where: str) -> None:
    """Every per-token list of a row has ``num_tokens`` values, ``cu_seqlens`` ends there, and
    the per-image lists agree (among the columns ``table`` has). Parquet's page CRC does not
    cover page headers: a flipped ``num_values`` there drops values without an error, and this
    is what notices. Raises :class:`ShardCorrupt` naming ``where`` and the row."""
    names = set(table.column_names)

    def lengths(c: str) -> np.ndarray:
        return np.asarray(pc.list_value_length(table[c]))

    for group, ref in ((TOKEN_COLUMNS, "num_tokens"), (IMAGE_COLUMNS, "")):
        present = [c for c in group if c in names]
        if ref in names:
            want, ref_name = np.asarray(table[ref]), ref
        elif present:
            want, ref_name = lengths(present[0]), f"{present[0]} has"
        else:
            continue
        for c in present:
            _same(lengths(c), want, where, f"{c} has {{}} values, {ref_name} {{}}")
    if "cu_seqlens" in names and "num_tokens" in names:
        n = lengths("cu_seqlens")
        flat = np.asarray(pc.list_flatten(table["cu_seqlens"]))
        last = np.full(len(n), -1)
        last[n > 0] = flat[np.cumsum(n)[n > 0] - 1]
        _same(last, np.asarray(table["num_tokens"]), where, "cu_seqlens ends at {}, num_tokens {}")


def _same(got: np.ndarray, want: np.ndarray, where: str, what: str) -> None:
    bad = np.flatnonzero(got != want)
    if bad.size:
        i = int(bad[0])
        raise ShardCorrupt(
            f"{where}: row {i}: {what.format(got[i], want[i])} (the file is damaged; "
            "`neo shards verify` checks every shard against the index)"
        )


def _is_damage(error: Exception) -> bool:
    """Whether a pyarrow error says the bytes are damaged ("CRC checksum verification failed",
    a page or footer that does not decode) rather than that reading failed (a network fault,
    which stays the ``OSError`` it is)."""
    text = str(error).lower()
    return isinstance(error, pa.ArrowException) or any(w in text for w in _DAMAGE_WORDS)


_DAMAGE_WORDS = (
    "checksum", "thrift", "magic bytes", "decompress", "corrupt", "page", "stream", "encoding",
    "dictionary", "malformed",
)  # fmt: skip


def open_shard(
    fs: fsspec.AbstractFileSystem, path: str, fmt: str, size: int | None = None
) -> ParquetShard | IpcShard:
    """A reader of one shard of format ``fmt`` (an index entry's ``format``; ``size`` its
    ``bytes``)."""
    if fmt == "parquet":
        return ParquetShard(fs, path)
    if fmt == "arrow":
        return IpcShard(fs, path, size)
    raise SchemaMismatch(f"{path}: shard format {fmt!r}, this neo reads {SHARD_FORMATS}")


def write_index(fs: fsspec.AbstractFileSystem, root: str, index: dict) -> None:
    """The index is the commit point of a dataset: write it only after every shard exists."""
    missing = [s["path"] for s in index["shards"] if not fs.exists(join(root, s["path"]))]
    if missing:
        raise RuntimeError(
            f"refusing to write the index: {len(missing)} shards missing, e.g. {missing[0]}"
        )
    atomic_write(fs, join(root, INDEX_NAME), json.dumps(index, indent=1, sort_keys=False).encode())


class PackedDataset:
    """A packed dataset opened from its index (local path or ``s3://...``).

    Shard readers (a Parquet footer, or an IPC head and memory map) are kept for the
    ``open_shards`` most recently read shards, so a loader that visits shards in random order
    reads each footer about once while a dataset of many shards holds a bounded number of maps.
    """

    def __init__(self, url: str, *, open_shards: int = 256, **storage_options: Any):
        self.url = url.rstrip("/")
        self.open_shards = max(1, open_shards)
        self._readers: OrderedDict[int, ParquetShard | IpcShard] = OrderedDict()
        self._lock = threading.Lock()
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

    def shard(self, i: int) -> ParquetShard | IpcShard:
        """The reader of shard ``i`` (opened on first use, then kept; see the class docstring)."""
        with self._lock:
            reader = self._readers.get(i)
            if reader is not None:
                self._readers.move_to_end(i)
                return reader
        s = self.shards[i]
        path = join(self.root, s["path"])
        reader = open_shard(self.fs, path, s.get("format", "parquet"), s.get("bytes"))
        with self._lock:
            self._readers[i] = reader
            while len(self._readers) > self.open_shards:
                self._readers.popitem(last=False)
        return reader

    def read_shard(self, i: int, columns: list[str] | None = None) -> pa.Table:
        """Shard ``i`` (or some of its columns) as one table, every page or pack checked."""
        reader = self.shard(i)
        table = reader.read_all(columns)
        check_lengths(table, reader.path)
        return table

    def pack_table(self, shard: int, pack: int) -> pa.Table:
        """One pack as a one-row table, reading only that pack (checked)."""
        reader = self.shard(shard)
        table = reader.read_pack(pack)
        check_lengths(table, f"{reader.path}: pack {pack}")
        return table

    def read_pack(self, shard: int, pack: int) -> dict:
        """One pack as a dict of Python values, reading only that pack."""
        return self.pack_table(shard, pack).to_pylist()[0]

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


def convert_dataset(
    src: PackedDataset, url: str, fmt: str, arrow_compression: str | None = None
) -> dict:
    """Copy the packed dataset ``src`` to ``url`` with its shards in format ``fmt``: the same
    packs in the same order under the same names (the suffix of ``fmt``), ``rejected/`` copied
    byte for byte, the index (written last) with the new shards' sizes and checksums and
    ``converted_from``. E.g. Parquet packed to an object store, as Arrow IPC on a local disk.
    Every source page or pack is checked as it is read. Returns the new index."""
    if fmt not in SHARD_FORMATS:
        raise ValueError(f"shard format {fmt!r}: expected one of {SHARD_FORMATS}")
    fs, root = url_to_fs(url)
    if fs.exists(join(root, INDEX_NAME)):
        raise FileExistsError(f"{url}: already holds a packed dataset ({INDEX_NAME})")
    shards = []
    for i, s in enumerate(src.shards):
        table = src.read_shard(i).cast(PACKED_SCHEMA)
        rel = s["path"].rsplit(".", 1)[0] + SHARD_SUFFIXES[fmt]
        info = write_shard_table(fs, root, rel, s["bucket"], table, fmt, arrow_compression)
        shards.append(asdict(info))
    for path in sorted(src.fs.glob(join(src.root, REJECTED_DIR, "*.parquet"))):
        with src.fs.open(path, "rb") as f:
            atomic_write(fs, join(root, REJECTED_DIR, path.rsplit("/", 1)[-1]), f.read())
    index = {**src.index, "shards": shards, "converted_from": src.url}
    index["buckets"] = [
        {**b, "bytes": sum(s["bytes"] for s in shards if s["bucket"] == b["name"])}
        for b in src.index["buckets"]
    ]
    if "totals" in index:
        index["totals"] = {**index["totals"], "bytes": sum(s["bytes"] for s in shards)}
    write_index(fs, root, index)
    return index
