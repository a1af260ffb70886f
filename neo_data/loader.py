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

A run may blend several packed datasets with weights (``train.data: [{path, weight}, ...]``,
the stage's mixture): :class:`BlendOrder` interleaves them deterministically -- dataset ``d``'s
``k``-th pack sits at time ``(k + 0.5) / w_d`` and positions follow time -- so every prefix of the
order holds each dataset within one pack of its share, and a position still names one pack
(dataset ``d``, its own ``k``-th pack in its own seeded epochs): the cursor stays one integer.

Ray Data cannot resume an iterator part way (see environment facts), so the trainer owns this
cursor; reading is a few range requests per pack (one Parquet row group, or one Arrow IPC
record batch -- a slice of the memory map on a local disk) through
:meth:`PackedDataset.pack_table`, which checks the pack's CRC-32s (a damaged shard stops the
run naming the file, not trains on it), with a small thread pool ahead of the consumer, which
keeps object-store latency off the step.
"""

from __future__ import annotations

import io
import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from neo_data.format.schema import TOKEN_COLUMNS  # per-token columns, as numpy int32 arrays
from neo_data.format.shards import PackedDataset
from neo_data.format.storage import join


@dataclass
class LoadedPack:
    """One pack ready for the model: token columns as int32 arrays, images as uint8 RGB
    ``[H, W, 3]`` arrays (already at their smart-resize size; torch uint8 tensors in pinned
    memory when the stream pins), plus where it came from."""

    position: int  # global position in the run's order
    shard: int  # of its dataset (``dataset``: index into the run's blend, 0 without one)
    index: int  # pack (row group) within the shard
    pack_id: str
    columns: dict[str, np.ndarray]  # TOKEN_COLUMNS, each [num_tokens]
    cu_seqlens: np.ndarray  # [samples + 1]
    images: list[Any]  # np.ndarray [H, W, 3] uint8, or a pinned torch.Tensor of that shape
    sample_ids: list[str]
    num_supervised: int
    dataset: int = 0

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


class BlendOrder:
    """A deterministic interleaving of datasets with weights ``w`` (normalised to sum 1).

    Dataset ``d``'s ``k``-th item has the key ``(k + 0.5) / w_d``; the blend is every item
    sorted by ``(key, d)``, and :meth:`at` finds the item at a position without walking the
    ones before it (a binary search per dataset), so resuming at position 10**9 costs what
    position 0 does. In any prefix of ``n`` positions dataset ``d`` has ``n * w_d`` items,
    within one.
    """

    def __init__(self, weights: Sequence[float]):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"blend weights must be positive numbers, got {list(weights)}")
        self.w = (w / w.sum()).tolist()

    def key(self, d: int, k: int) -> float:
        return (k + 0.5) / self.w[d]

    def _before(self, e: int, x: float, inclusive: bool) -> int:
        """How many items of dataset ``e`` have a key below ``x`` (or equal, ``inclusive``)."""

        def ahead(k: int) -> bool:
            key = self.key(e, k)
            return key <= x if inclusive else key < x

        c = max(0, math.ceil(x * self.w[e] - 0.5))  # the estimate; fixed up against key()
        while c > 0 and not ahead(c - 1):
            c -= 1
        while ahead(c):
            c += 1
        return c

    def rank(self, d: int, k: int) -> int:
        """The position of dataset ``d``'s ``k``-th item."""
        x = self.key(d, k)
        return k + sum(self._before(e, x, e < d) for e in range(len(self.w)) if e != d)

    def at(self, position: int) -> tuple[int, int]:
        """``(dataset, k)``: the item at ``position``."""
        if position < 0:
            raise ValueError(f"position {position} < 0")
        for d in range(len(self.w)):
            lo, hi = 0, position  # rank(d, k) >= k, so k <= position
            while lo < hi:
                mid = (lo + hi) // 2
                if self.rank(d, mid) < position:
                    lo = mid + 1
                else:
                    hi = mid
            if self.rank(d, lo) == position:
                return d, lo
        raise AssertionError(f"no item at position {position}")  # ranks cover every position


class PackStream:
    """The packs of one rank, from global position ``start`` on (see the module docstring).

    Args:
        url: packed dataset root (local path or ``s3://``), as written by the pack job; or a
            blend, ``[(url, weight), ...]`` (:class:`BlendOrder`).
        rank, world_size: this rank among the data-parallel ranks.
        seed: fixes the order; the same seed and dataset give the same packs everywhere.
        start: the first global position of this run (a checkpoint's cursor, 0 for a new run).
        prefetch: packs read and decoded ahead, in a thread pool.
        pin_memory: images as uint8 torch tensors in pinned memory (a CUDA trainer's choice:
            the step copies them to the device without blocking; :func:`decode_pack`).
    """

    def __init__(
        self,
        url: str | Sequence[tuple[str, float]],
        rank: int = 0,
        world_size: int = 1,
        *,
        seed: int = 0,
        start: int = 0,
        prefetch: int = 4,
        storage_options: dict[str, Any] | None = None,
        pin_memory: bool = False,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        sources = [(url, 1.0)] if isinstance(url, str) else list(url)
        self.datasets = [PackedDataset(u, **(storage_options or {})) for u, _ in sources]
        # each dataset its own seeded epochs (seed + d: two blended copies do not move in step)
        self.orders = [
            PackOrder([s["packs"] for s in ds.shards], seed + d)
            for d, ds in enumerate(self.datasets)
        ]
        self.blend = BlendOrder([w for _, w in sources]) if len(sources) > 1 else None
        self.dataset, self.order = self.datasets[0], self.orders[0]
        self.rank, self.world_size = rank, world_size
        self.start = start
        self.prefetch = max(1, prefetch)
        self.pin_memory = pin_memory

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
        d, k = self.blend.at(position) if self.blend is not None else (0, position)
        shard, index = self.orders[d].at(k)
        dataset = self.datasets[d]
        path = join(dataset.root, dataset.shards[shard]["path"])
        row = dataset.pack_table(shard, index)  # one pack, checked (page or pack CRC-32)
        pack = decode_pack(row, position, shard, index, path, pin_memory=self.pin_memory)
        pack.dataset = d
        return pack


def decode_pack(
    row: pa.Table | pa.RecordBatch | dict,
    position: int,
    shard: int,
    index: int,
    where: str,
    *,
    pin_memory: bool = False,
) -> LoadedPack:
    """A packed row as arrays and decoded images.

    ``row`` is the pack's one-row Arrow table or record batch (a row group as read) or the same
    row as a dict of Python values (``PackedDataset.read_pack``). Token columns come straight from the Arrow list
    arrays' values (``to_numpy``, no Python list per token: the decoding threads keep the GIL
    free for the training thread); images decode to uint8 RGB ``[H, W, 3]`` arrays, or, with
    ``pin_memory``, to uint8 torch tensors in pinned host memory, made here on the loader thread
    so the trainer can copy them to the GPU without blocking and normalise them there.
    """
    if isinstance(row, dict):
        table = pa.Table.from_pylist([row])
    else:
        table = pa.Table.from_batches([row]) if isinstance(row, pa.RecordBatch) else row
    if table.num_rows != 1:
        raise ValueError(f"{where}: expected one pack per row group, got {table.num_rows} rows")
    columns = {c: _values(table, c, where).astype(np.int32, copy=False) for c in TOKEN_COLUMNS}
    pack_id = table.column("pack_id")[0].as_py()
    data = _flat(table, "images", where)
    heights = _values(table, "image_heights", where).tolist()
    widths = _values(table, "image_widths", where).tolist()
    if not len(data) == len(heights) == len(widths):
        raise ValueError(
            f"{where}: pack {pack_id} has {len(data)} images but {len(heights)} heights and "
            f"{len(widths)} widths"
        )
    images = []
    for k, (h, w) in enumerate(zip(heights, widths, strict=True)):
        with Image.open(io.BytesIO(data[k].as_py())) as im:
            array = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        if array.shape[:2] != (h, w):
            raise ValueError(
                f"{where}: pack {pack_id} image {k} decodes to {array.shape[1]}x"
                f"{array.shape[0]}, the row says {w}x{h}"
            )
        images.append(_pinned(array) if pin_memory else array)
    return LoadedPack(
        position=position,
        shard=shard,
        index=index,
        pack_id=pack_id,
        columns=columns,
        cu_seqlens=_values(table, "cu_seqlens", where).astype(np.int32, copy=False),
        images=images,
        sample_ids=_flat(table, "sample_ids", where).to_pylist(),
        num_supervised=int(table.column("num_supervised")[0].as_py()),
    )


def _flat(table: pa.Table, name: str, where: str) -> pa.Array:
    """The values of the one row's list column ``name`` (offsets applied, no copy)."""
    if name not in table.column_names:
        raise ValueError(f"{where}: the packed row has no column {name!r}")
    return table.column(name).combine_chunks().flatten()


def _values(table: pa.Table, name: str, where: str) -> np.ndarray:
    """A list column of the one row as a numpy array (zero-copy for int32); nulls, which the
    packed schema does not allow, are refused."""
    values = _flat(table, name, where)
    if values.null_count:
        raise ValueError(f"{where}: column {name!r} holds {values.null_count} nulls")
    return values.to_numpy(zero_copy_only=False)


def _pinned(array: np.ndarray):
    """A uint8 torch tensor in pinned (page-locked) host memory holding ``array``."""
    import torch  # the trainer's dependency; only a CUDA run pins

    out = torch.empty(array.shape, dtype=torch.uint8, pin_memory=True)
    out.numpy()[...] = array
    return out
