"""The streaming loader without Ray, on a small packed dataset: position ``p`` of rank ``r`` is
the pack the seeded order names, ranks split the positions, a resumed stream continues with the
very next pack, every epoch reads every pack once, and decoded packs are the stored arrays and
pixels (a size that disagrees with the row is refused)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from neo_data.format.shards import PackedDataset
from neo_data.loader import TOKEN_COLUMNS, PackOrder, PackStream, decode_pack


def take(stream: PackStream, n: int) -> list:
    return list(itertools.islice(iter(stream), n))


def test_rank_r_of_w_reads_the_positions_start_plus_r_every_w(small_packed):
    url = small_packed([3, 4, 2])
    ds = PackedDataset(url)
    order = PackOrder([3, 4, 2], seed=5)
    world = 3
    for rank in range(world):
        got = take(PackStream(url, rank, world, seed=5, start=4, prefetch=2), 5)
        positions = [4 + rank + world * i for i in range(5)]
        assert [p.position for p in got] == positions
        for pack, position in zip(got, positions, strict=True):
            shard, index = order.at(position)
            assert (pack.shard, pack.index) == (shard, index)
            assert pack.pack_id == ds.read_pack(shard, index)["pack_id"]


def test_a_resumed_stream_continues_with_the_very_next_packs(small_packed):
    url = small_packed([3, 4, 2])
    for world in (1, 2):
        full = [take(PackStream(url, r, world, seed=1), 8) for r in range(world)]
        # 3 steps done, 1 pack per rank per step: the checkpoint's cursor is 3 * world
        resumed = [
            take(PackStream(url, r, world, seed=1, start=3 * world), 5) for r in range(world)
        ]
        for r in range(world):
            assert [p.pack_id for p in resumed[r]] == [p.pack_id for p in full[r][3:]]
        consumed = sorted(p.position for r in range(world) for p in full[r][:3])
        assert consumed == list(range(3 * world))  # the ranks together: no position skipped


def test_every_epoch_reads_every_pack_once_in_a_new_order(small_packed):
    url = small_packed([3, 4, 2])
    ids = [p.pack_id for p in take(PackStream(url, seed=2), 18)]
    everything = sorted(p["pack_id"] for p in PackedDataset(url).iter_packs())
    assert sorted(ids[:9]) == everything and sorted(ids[9:]) == everything
    assert ids[:9] != ids[9:]
    assert ids[:9] == [p.pack_id for p in take(PackStream(url, seed=2), 9)]  # seeded
    assert ids[:9] != [p.pack_id for p in take(PackStream(url, seed=3), 9)]


def test_a_blend_reads_each_pack_from_its_own_dataset(small_packed):
    """Two different datasets whose shards share numbers: a pack comes from its own file,
    read with its own footer."""
    a, b = small_packed([2, 1]), small_packed([3], buckets=("high",))
    stream = PackStream([(a, 1.0), (b, 1.0)], seed=4)
    packs = [stream.load(p) for p in range(12)]
    assert {p.dataset for p in packs} == {0, 1}
    for p in packs:
        ds = PackedDataset([a, b][p.dataset])
        assert p.pack_id == ds.read_pack(p.shard, p.index)["pack_id"]
        assert p.pack_id.startswith(("low-", "high-")[p.dataset])
        assert (p.images[0][0, 0] == [p.shard, p.index, 7]).all()


def test_a_loaded_pack_is_the_stored_arrays_and_pixels(small_packed):
    url = small_packed([2, 2])
    stream = PackStream(url, seed=0)
    pack = stream.load(3)
    row = PackedDataset(url).read_pack(pack.shard, pack.index)
    for col in TOKEN_COLUMNS:
        assert pack.columns[col].dtype == np.int32
        assert pack.columns[col].tolist() == row[col]
    assert pack.cu_seqlens.tolist() == row["cu_seqlens"] == [0, 7, 10]
    assert pack.sample_lengths == [7, 3] and pack.num_tokens == 10
    assert pack.sample_ids == row["sample_ids"] and pack.num_supervised == row["num_supervised"]
    (image,) = pack.images
    assert image.shape == (32, 64, 3) and pack.image_sizes == [2]
    assert (image == np.array([pack.shard, pack.index, 7], dtype=np.uint8)).all()


def test_an_image_of_another_size_than_its_row_says_is_refused(small_packed):
    row = PackedDataset(small_packed([1])).read_pack(0, 0)
    decode_pack(row, 0, 0, 0, "here")
    bad = {**row, "image_heights": [64]}
    with pytest.raises(
        ValueError, match="here: pack low-0-0 image 0 decodes to 64x32, the row says 64x64"
    ):
        decode_pack(bad, 0, 0, 0, "here")


def test_bad_ranks_and_positions_are_refused(small_packed):
    url = small_packed([1])
    with pytest.raises(ValueError, match=r"rank 2 outside 0\.\.1"):
        PackStream(url, 2, 2)
    with pytest.raises(ValueError, match="position -1 < 0"):
        PackOrder([1], 0).at(-1)
    with pytest.raises(ValueError, match="no packs"):
        PackOrder([0, 0], 0)
