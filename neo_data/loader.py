"""Streaming packs to training ranks in a fixed, seeded order, with an exact resume point.

The order of a run is a pure function of the dataset's index and a seed: epoch ``e`` is a
permutation of every pack of the dataset drawn from ``(seed, e)``, and the epochs follow each
other. A position ``p`` in that endless order names one pack. A step of a run with ``W`` ranks
that feed each rank ``A`` packs (gradient accumulation) consumes ``W * A`` consecutive positions:
micro-batch ``j`` of rank ``r`` at step ``s`` is position ``start + s*W*A + j*W + r``.

The cursor saved in a checkpoint is therefore one integer, the next global position, equal on
every rank. A resumed run starts there, and trains on exactly the packs an uninterrupted run would
have trained on next (with the same world size the same packs land on the same ranks; with a
different one it still continues with the next untrained packs).

Ray Data cannot resume an iterator part way (see environment facts), so the trainer owns this
cursor; reading is a few range requests per pack (one Parquet row group each) with a small
thread pool ahead of the consumer, which keeps object-store latency off the step.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from neo_data.shards import PackedDataset, join

# Per-token columns of a packed row, as numpy int32 arrays.
TOKEN_COLUMNS = ("input_ids", "labels", "t_index", "h_index", "w_index", "image_ordinal")


@dataclass
class LoadedPack:
    """One pack ready for the model: token columns as int32 arrays, images as uint8 RGB
    ``[H, W, 3]`` arrays (already at their smart-resize size), plus where it came from."""

    position: int  # global position in the run's order
    shard: int
    index: int  # pack (row group) within the shard
    pack_id: str
    columns: dict[str, np.ndarray]  # TOKEN_COLUMNS, each [num_tokens]
    cu_seqlens: np.ndarray  # [samples + 1]
    images: list[np.ndarray]
    sample_ids: list[str]
    num_supervised: int

    @property
    def num_tokens(self) -> int:
        return int(self.columns["input_ids"].shape[0])

    @property
    def sample_lengths(self) -> list[int]:
        return np.diff(self.cu_seqlens).tolist()

    @property
    def image_sizes(self) -> list[int]:
        """Image tokens per image (one per 32x32 pixels)."""
        return [img.shape[0] * img.shape[1] // 1024 for img in self.images]


class PackOrder:
    """The run's endless, seeded order of ``(shard, pack)`` pairs."""

    def __init__(self, packs_per_shard: list[int], seed: int):
        self.refs = [(s, k) for s, n in enumerate(packs_per_shard) for k in range(n)]
        if not self.refs:
            raise ValueError("the dataset holds no packs")
        self.seed = seed
        self._epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.refs)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch = (epoch, rng.permutation(len(self.refs)))
        return self._epoch[1]

    def at(self, position: int) -> tuple[int, int]:
        if position < 0:
            raise ValueError(f"position {position} < 0")
        epoch, k = divmod(position, len(self.refs))
        return self.refs[int(self.permutation(epoch)[k])]


class PackStream:
    """The packs of one rank, from global position ``start`` on (see the module docstring).

    Args:
        url: packed dataset root (local path or ``s3://``), as written by the pack job.
        rank, world_size: this rank among the data-parallel ranks.
        seed: fixes the order; the same seed and dataset give the same packs everywhere.
        start: the first global position of this run (a checkpoint's cursor, 0 for a new run).
        prefetch: packs read and decoded ahead, in a thread pool.
    """

    def __init__(
        self,
        url: str,
        rank: int = 0,
        world_size: int = 1,
        *,
        seed: int = 0,
        start: int = 0,
        prefetch: int = 4,
        storage_options: dict[str, Any] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.dataset = PackedDataset(url, **(storage_options or {}))
        self.rank, self.world_size = rank, world_size
        self.order = PackOrder([s["packs"] for s in self.dataset.shards], seed)
        self.start = start
        self.prefetch = max(1, prefetch)
        self._metadata: dict[int, pq.FileMetaData] = {}

    def positions(self, start: int | None = None) -> Iterator[int]:
        p = (self.start if start is None else start) + self.rank
        while True:
            yield p
            p += self.world_size

    def __iter__(self) -> Iterator[LoadedPack]:
        with ThreadPoolExecutor(self.prefetch, thread_name_prefix="neo-loader") as pool:
            ahead: deque[Future[LoadedPack]] = deque()
            positions = self.positions()
            while True:
                while len(ahead) < self.prefetch:
                    ahead.append(pool.submit(self.load, next(positions)))
                yield ahead.popleft().result()

    def load(self, position: int) -> LoadedPack:
        """Read and decode the pack at one global position."""
        shard, index = self.order.at(position)
        path = join(self.dataset.root, self.dataset.shards[shard]["path"])
        with self.dataset.fs.open(path, "rb") as f:
            if shard not in self._metadata:
                self._metadata[shard] = pq.read_metadata(f)
                f.seek(0)
            row = pq.ParquetFile(f, metadata=self._metadata[shard]).read_row_group(index)
        return decode_pack(row.to_pylist()[0], position, shard, index, path)


def decode_pack(row: dict, position: int, shard: int, index: int, where: str) -> LoadedPack:
    """A packed row (as ``PackedDataset.read_pack`` returns it) as arrays and decoded images."""
    columns = {c: np.asarray(row[c], dtype=np.int32) for c in TOKEN_COLUMNS}
    images = []
    for k, (data, h, w) in enumerate(
        zip(row["images"], row["image_heights"], row["image_widths"], strict=True)
    ):
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("RGB"))
        if array.shape[:2] != (h, w):
            raise ValueError(
                f"{where}: pack {row['pack_id']} image {k} decodes to {array.shape[1]}x"
                f"{array.shape[0]}, the row says {w}x{h}"
            )
        images.append(array)
    return LoadedPack(
        position=position,
        shard=shard,
        index=index,
        pack_id=row["pack_id"],
        columns=columns,
        cu_seqlens=np.asarray(row["cu_seqlens"], dtype=np.int32),
        images=images,
        sample_ids=list(row["sample_ids"]),
        num_supervised=int(row["num_supervised"]),
    )
