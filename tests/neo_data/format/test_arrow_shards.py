"""Arrow IPC shards beside Parquet: the file is the IPC stream pyarrow itself writes (one record
batch per pack), every reader of neo returns the same packs from both formats, a local pack is
a slice of the memory map, ``datasets`` opens the shards, and the manifest chooses the format."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from neo_data.browser.views import PACK_COLUMNS
from neo_data.format.ipc import PACKS_KEY, IpcShard
from neo_data.format.schema import PACKED_SCHEMA
from neo_data.format.shards import PackedDataset, convert_dataset
from neo_data.format.storage import url_to_fs
from neo_data.loader import TOKEN_COLUMNS, PackStream
from neo_data.manifest.pack import PackSpec

FORMATS = [
    {"fmt": "parquet"},
    {"fmt": "arrow"},  # zstd
    {"fmt": "arrow", "arrow_compression": "lz4"},
    {"fmt": "arrow", "arrow_compression": "none"},
]


def shard_file(url: str, i: int = 0) -> Path:
    return Path(url) / PackedDataset(url).shards[i]["path"]


def test_an_arrow_shard_is_the_ipc_stream_pyarrow_writes(small_packed):
    parquet = small_packed([3])
    arrow = small_packed([3], fmt="arrow")
    path = shard_file(arrow)
    assert path.suffix == ".arrow" and PackedDataset(arrow).shards[0]["format"] == "arrow"
    data = path.read_bytes()
    # the peer: pyarrow's own stream reader and writer (same batches, metadata and codec)
    reader = ipc.open_stream(data)
    head, batches = reader.schema, list(reader)
    assert [b.num_rows for b in batches] == [1, 1, 1]  # one record batch per pack
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, head, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        for batch in batches:
            w.write_batch(batch)
    assert sink.getvalue().to_pybytes() == data
    table = pq.read_table(shard_file(parquet)).cast(PACKED_SCHEMA)
    assert pa.Table.from_batches(batches).equals(table)  # the same packs as the Parquet twin
    sizes = [n for n, _ in json.loads(head.metadata[PACKS_KEY])]
    assert len(sizes) == 3 and sum(sizes) < len(data)


@pytest.mark.parametrize("fmt", FORMATS[1:], ids=lambda f: f.get("arrow_compression", "zstd"))
def test_every_reader_gives_the_same_packs_in_both_formats(small_packed, fmt):
    buckets = ("low", "high")
    ref, other = PackedDataset(small_packed([3, 2], buckets)), None
    other = PackedDataset(small_packed([3, 2], buckets, **fmt))
    for i, (a, b) in enumerate(zip(ref.shards, other.shards, strict=True)):
        same = {k: v for k, v in a.items() if k not in ("path", "bytes", "sha256", "format")}
        assert same == {k: v for k, v in b.items() if k in same}  # the counts of the index
        assert (a["format"], b["format"]) == ("parquet", "arrow")
        assert ref.read_shard(i).equals(other.read_shard(i))
        assert ref.read_shard(i, PACK_COLUMNS).equals(other.read_shard(i, PACK_COLUMNS))
        for k in range(a["packs"]):
            assert ref.read_pack(i, k) == other.read_pack(i, k)
    assert list(ref.iter_packs(["high"])) == list(other.iter_packs(["high"]))
    with pytest.raises(IndexError, match=r"pack 2 out of range 0\.\.1"):
        other.read_pack(1, 2)
    # the training loader: the same order, arrays and pixels
    want = PackStream(ref.url, 0, 1, seed=3)
    got = PackStream(other.url, 0, 1, seed=3)
    for position in range(7):
        p, q = want.load(position), got.load(position)
        assert (p.pack_id, p.shard, p.index) == (q.pack_id, q.shard, q.index)
        for c in TOKEN_COLUMNS:
            np.testing.assert_array_equal(p.columns[c], q.columns[c])
        assert [i.tobytes() for i in p.images] == [i.tobytes() for i in q.images]


def test_a_local_uncompressed_pack_is_a_slice_of_the_memory_map(small_packed):
    for codec, mapped in (("none", True), ("zstd", False)):
        url = small_packed([2], fmt="arrow", arrow_compression=codec)
        fs, _ = url_to_fs(url)
        shard = IpcShard(fs, str(shard_file(url)))
        images = shard.read_pack(1)["images"].chunks[0].values  # the image bytes of pack 1
        address = images.buffers()[2].address
        start = shard._map.address
        assert (start <= address < start + shard._map.size) is mapped, codec


def test_datasets_opens_an_arrow_shard_and_the_whole_set(small_packed, tmp_path):
    ds = PackedDataset(small_packed([3, 2], fmt="arrow"))
    files = [str(Path(ds.url) / s["path"]) for s in ds.shards]
    one = datasets.Dataset.from_file(files[0])  # memory-maps the IPC stream
    assert one.num_rows == 3 and one.to_list() == ds.read_shard(0).to_pylist()
    whole = datasets.load_dataset(
        "arrow", data_files=files, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert whole["pack_id"] == [p["pack_id"] for p in ds.iter_packs()]
    assert whole[4]["input_ids"] == ds.read_pack(1, 1)["input_ids"]


def test_convert_copies_the_same_packs_into_the_other_format(small_packed, tmp_path):
    src = PackedDataset(small_packed([3, 2], ("low", "high")))
    index = convert_dataset(src, str(tmp_path / "as-arrow"), "arrow", "lz4")
    dst = PackedDataset(str(tmp_path / "as-arrow"))
    assert dst.index == index and index["converted_from"] == src.url
    assert [s["path"] for s in dst.shards] == [
        s["path"].replace(".parquet", ".arrow") for s in src.shards
    ]
    assert dst.verify() == [] and list(dst.iter_packs()) == list(src.iter_packs())
    back = convert_dataset(dst, str(tmp_path / "back"), "parquet")
    assert [s["sha256"] for s in back["shards"]] == [s["sha256"] for s in src.shards]
    with pytest.raises(FileExistsError, match="already holds a packed dataset"):
        convert_dataset(src, str(tmp_path / "back"), "parquet")


def test_the_manifest_chooses_the_format_and_its_codec():
    assert (PackSpec().format, PackSpec().arrow_compression) == ("parquet", None)
    spec = PackSpec(format="arrow", arrow_compression="lz4")
    assert PackSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ValueError, match="arrow_compression applies to format: arrow"):
        PackSpec(arrow_compression="zstd")
    with pytest.raises(ValueError, match="format"):
        PackSpec(format="tfrecord")
