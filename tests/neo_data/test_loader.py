"""The streaming loader without Ray, on a small packed dataset: position ``p`` of rank ``r`` is
the pack the seeded order names, ranks split the positions, a resumed stream continues with the
very next pack, every epoch reads every pack once, and decoded packs are the stored arrays and
pixels (a size that disagrees with the row is refused)."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from neo_data.format.schema import PACKED_SCHEMA
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


def _reference_decode(row: dict) -> tuple[dict, list[np.ndarray]]:
    """The pre-Arrow decode, written out: Python lists to int32 arrays, PIL to RGB arrays."""
    columns = {c: np.asarray(row[c], dtype=np.int32) for c in TOKEN_COLUMNS}
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in row["images"]]
    return columns, images


def _noise_jpeg(rng: np.random.Generator, h: int, w: int, mode: str = "RGB") -> bytes:
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_the_arrow_decode_equals_the_python_row_decode(small_packed):
    """Packs read as Arrow row groups (the stream) and as Python rows decode to the same
    int32 columns, offsets and pixels as the list-and-PIL decode; JPEG (RGB and greyscale)
    images too, and a pack without images."""
    url = small_packed([2, 3])
    stream, ds = PackStream(url, seed=0), PackedDataset(url)
    for position in range(5):
        pack = stream.load(position)
        row = ds.read_pack(pack.shard, pack.index)
        columns, images = _reference_decode(row)
        for c in TOKEN_COLUMNS:
            assert pack.columns[c].dtype == np.int32 and np.array_equal(pack.columns[c], columns[c])
        assert np.array_equal(pack.cu_seqlens, np.asarray(row["cu_seqlens"]))
        assert all(np.array_equal(a, b) for a, b in zip(pack.images, images, strict=True))
        assert (pack.pack_id, pack.sample_ids) == (row["pack_id"], row["sample_ids"])
    rng = np.random.default_rng(0)
    jpegs = [_noise_jpeg(rng, 64, 32), _noise_jpeg(rng, 32, 96, "L")]
    row = {**ds.read_pack(0, 0), "images": jpegs, "image_heights": [64, 32],
           "image_widths": [32, 96]}  # fmt: skip
    table = pa.Table.from_pylist([row], schema=PACKED_SCHEMA)
    _, images = _reference_decode(row)
    for source in (table, row):
        pack = decode_pack(source, 0, 0, 0, "here")
        assert [a.dtype for a in pack.images] == [np.uint8, np.uint8]
        assert all(np.array_equal(a, b) for a, b in zip(pack.images, images, strict=True))
    empty = decode_pack({**row, "images": [], "image_heights": [], "image_widths": []}, 0, 0, 0, "")
    assert empty.images == [] and empty.num_tokens == len(row["input_ids"])


def test_a_row_whose_image_lists_disagree_is_refused(small_packed):
    row = PackedDataset(small_packed([1])).read_pack(0, 0)
    with pytest.raises(ValueError, match="here: pack low-0-0 has 1 images but 2 heights"):
        decode_pack({**row, "image_heights": [32, 32]}, 0, 0, 0, "here")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_a_pinning_stream_gives_pinned_uint8_tensors_of_the_same_pixels(small_packed):
    url = small_packed([2])
    plain, pinned = PackStream(url).load(1), PackStream(url, pin_memory=True).load(1)
    for a, b in zip(plain.images, pinned.images, strict=True):
        assert isinstance(b, torch.Tensor) and b.is_pinned() and b.dtype == torch.uint8
        assert np.array_equal(b.numpy(), a)


def test_a_record_batch_decodes_like_its_table_and_nulls_are_refused(small_packed):
    row = PackedDataset(small_packed([1])).read_pack(0, 0)
    table = pa.Table.from_pylist([row], schema=PACKED_SCHEMA)
    a, b = decode_pack(table, 0, 0, 0, "t"), decode_pack(table.to_batches()[0], 0, 0, 0, "t")
    assert all(np.array_equal(a.columns[c], b.columns[c]) for c in TOKEN_COLUMNS)
    labels = list(row["labels"])
    labels[1] = None
    with pytest.raises(ValueError, match="here: column 'labels' holds 1 nulls"):
        decode_pack({**row, "labels": labels}, 0, 0, 0, "here")
