"""Arrow IPC shards: one record batch per pack, each pack checked against its CRC-32 on read.

The file is an Arrow IPC **stream** (``.arrow``): the encapsulated schema message, one record
batch message per pack, the end-of-stream marker. That is the layout ``datasets`` keeps in its
cache, so ``datasets.Dataset.from_file`` memory-maps a shard as it is (datasets 5.2 opens only
streams there; the IPC *file* layout, with its footer, fails with "Expected to read ... metadata
bytes"), ``load_dataset("arrow", data_files=...)`` reads the set, and ``pyarrow.ipc.open_stream``
or Polars ``read_ipc_stream`` read one file.

A stream has no footer, so the schema message -- the first bytes of the file -- carries the
table of packs in its metadata: ``neo.packs`` = JSON ``[[bytes, crc32], ...]``, one entry per
record batch message, in order. Pack ``k`` occupies ``[head + sum(bytes[:k]), + bytes[k])``
where ``head`` is the schema message's length. A reader fetches the head once per shard; then a
pack is one random access -- a zero-copy slice of the memory map on a local disk, one range
request on an object store -- whose CRC-32 (zlib's, the polynomial of Parquet's page checksums)
is checked before the batch is decoded, so a flipped byte fails the read instead of training on
damaged pixels. ``neo shards verify`` still checks the whole file against the index's sha256.

Compression is per file (``pack.arrow_compression``: zstd, lz4 or none): pyarrow's
``IpcWriteOptions`` applies one codec to every buffer of a batch. The format can mark single
buffers uncompressed, but pyarrow does not expose the option (Arrow C++'s ``min_space_savings``)
that writes them, so with a codec the already-encoded image bytes go through it too (zstd and
lz4 store incompressible data as raw blocks: a copy on read, not a second decode) and lose
zero-copy; ``none`` keeps every buffer zero-copy at the price of larger token columns.
"""

from __future__ import annotations

import json
import struct
import zlib

import fsspec
import pyarrow as pa
import pyarrow.ipc as ipc

from neo_data.format.schema import PACKED_SCHEMA, SchemaMismatch, ShardCorrupt, check_schema
from neo_data.format.storage import is_local

PACKS_KEY = b"neo.packs"
ARROW_COMPRESSIONS = ("zstd", "lz4", "none")
DEFAULT_ARROW_COMPRESSION = "zstd"
_CONTINUATION = b"\xff\xff\xff\xff"
_END_OF_STREAM = _CONTINUATION + b"\x00\x00\x00\x00"
_HEAD_GUESS = 64 << 10  # bytes fetched for the head on an object store (it is a few KiB)


def table_to_ipc_bytes(table: pa.Table, compression: str | None = None) -> bytes:
    """The shard ``table`` as an IPC stream, one record batch per row (pack), with the table of
    packs (``neo.packs``: each batch message's length and CRC-32) in the schema metadata.
    ``compression``: one of :data:`ARROW_COMPRESSIONS`, None for the default (zstd)."""
    compression = compression or DEFAULT_ARROW_COMPRESSION
    if compression not in ARROW_COMPRESSIONS:
        raise ValueError(f"arrow compression {compression!r}: expected one of {ARROW_COMPRESSIONS}")
    options = ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
    sink = pa.BufferOutputStream()
    ends = []
    with ipc.new_stream(sink, table.schema, options=options) as writer:
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)
            ends.append(sink.tell())
    body = sink.getvalue()
    reader = pa.BufferReader(body)
    ipc.read_message(reader)  # the schema message (the writer emits it with the first batch)
    starts = [reader.tell(), *ends[:-1]][: len(ends)]
    packs = [[e - s, zlib.crc32(body.slice(s, e - s))] for s, e in zip(starts, ends, strict=True)]
    meta = {**(table.schema.metadata or {}), PACKS_KEY: json.dumps(packs).encode()}
    head = table.schema.with_metadata(meta).serialize()
    return head.to_pybytes() + body.slice(reader.tell()).to_pybytes()


class IpcShard:
    """One IPC shard opened for reading: its head (schema, table of packs) read once; packs by
    number, each checked against its CRC-32. Memory-mapped on a local disk (a pack is a slice of
    the map, its uncompressed buffers zero-copy), range reads elsewhere. Thread-safe."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, size: int | None = None):
        """``size``: the file's length when known (the index's ``bytes``: no request for it)."""
        self.fs, self.path = fs, path
        self._map: pa.Buffer | None = None
        if is_local(fs):
            with pa.memory_map(path, "r") as f:
                self._map = f.read_buffer()  # keeps the mapping alive, not the descriptor
            self.size = self._map.size
        else:
            self.size = fs.size(path) if size is None else size
        head = self._read(0, min(_HEAD_GUESS, self.size))
        if head.size < 8 or head.to_pybytes()[:4] != _CONTINUATION:
            raise SchemaMismatch(f"{path}: not an Arrow IPC stream (neo writes the stream layout)")
        length = 8 + struct.unpack("<i", head.to_pybytes()[4:8])[0]
        if not 8 < length <= self.size:
            raise ShardCorrupt(f"{path}: its head claims {length} bytes, the file has {self.size}")
        if length > head.size:
            head = self._read(0, length)
        try:
            self.schema = ipc.read_schema(head.slice(0, length))
            packs = json.loads((self.schema.metadata or {})[PACKS_KEY])
        except (pa.ArrowException, OSError, KeyError, ValueError) as e:
            raise ShardCorrupt(f"{path}: unreadable head (schema message): {e}") from e
        check_schema(self.schema, PACKED_SCHEMA, path)
        if not self.schema.equals(PACKED_SCHEMA):  # neo writes exactly this: a type id, a
            raise ShardCorrupt(  # nullability or a name that differs is damage in the head
                f"{path}: its schema differs from the packed schema neo writes: {self.schema}"
            )
        self.sizes = [int(n) for n, _ in packs]
        self.crcs = [int(c) for _, c in packs]
        self.starts = [length]
        for n in self.sizes:
            self.starts.append(self.starts[-1] + n)
        if self.size != self.starts[-1] + len(_END_OF_STREAM):
            raise ShardCorrupt(
                f"{path}: {self.size} bytes, its head describes "
                f"{self.starts[-1] + len(_END_OF_STREAM)} (truncated or appended to)"
            )

    @property
    def num_packs(self) -> int:
        return len(self.sizes)

    def _read(self, start: int, length: int) -> pa.Buffer:
        if self._map is not None:
            return self._map.slice(start, length)
        # keywords: s3fs takes version_id as its second positional argument
        return pa.py_buffer(self.fs.cat_file(self.path, start=start, end=start + length))

    def _batch(self, k: int, raw: pa.Buffer) -> pa.RecordBatch:
        if raw.size != self.sizes[k] or zlib.crc32(raw) != self.crcs[k]:
            raise ShardCorrupt(
                f"{self.path}: pack {k} fails its CRC-32 check (the file is damaged; "
                "`neo shards verify` checks every shard against the index)"
            )
        return ipc.read_record_batch(ipc.read_message(raw), self.schema)

    def read_pack(self, k: int) -> pa.Table:
        """Pack ``k`` as a one-row table (one read of its bytes, checked)."""
        if not 0 <= k < self.num_packs:
            raise IndexError(f"{self.path}: pack {k} out of range 0..{self.num_packs - 1}")
        return pa.Table.from_batches([self._batch(k, self._read(self.starts[k], self.sizes[k]))])

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        """Every pack (one read of the whole file, each pack checked); ``columns`` selects after
        decoding (an IPC stream has no column projection on read)."""
        whole = self._read(0, self.starts[-1])
        batches = [
            self._batch(k, whole.slice(self.starts[k], self.sizes[k]))
            for k in range(self.num_packs)
        ]
        table = pa.Table.from_batches(batches, schema=self.schema)
        return table.select(columns) if columns is not None else table
