"""A damaged shard is caught on every read path, in both formats: one flipped byte in a pack's
pixels (which pyarrow's unchecked readers return silently) stops the training loader naming
the file and the pack, and fails ``neo shards verify``; no flipped byte anywhere in a shard
makes a reader return different packs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from neo_data.format.ipc import PACKS_KEY
from neo_data.format.schema import ShardCorrupt
from neo_data.format.shards import PackedDataset
from neo_data.loader import PackStream
from pipelines import shards_cmd

FORMATS = {
    "parquet": {"fmt": "parquet"},
    "arrow-none": {"fmt": "arrow", "arrow_compression": "none"},
    "arrow-zstd": {"fmt": "arrow", "arrow_compression": "zstd"},
}


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))


def pack_range(data: bytes, k: int) -> tuple[int, int]:
    """Where pack ``k`` of an IPC shard lies (from its head's table of packs)."""
    head = ipc.open_stream(data).schema
    sizes = [n for n, _ in json.loads(head.metadata[PACKS_KEY])]
    start = len(data) - 8 - sum(sizes) + sum(sizes[:k])
    return start, start + sizes[k]


def unchecked_images(path: Path, fmt: str, k: int) -> list[bytes]:
    """Pack ``k``'s image bytes as pyarrow reads them without any check."""
    if fmt == "parquet":
        return pq.ParquetFile(path).read_row_group(k)["images"].to_pylist()[0]
    return list(ipc.open_stream(path.read_bytes()))[k]["images"].to_pylist()[0]


@pytest.mark.parametrize("name", FORMATS)
def test_a_flipped_byte_in_a_pack_stops_the_loader_and_fails_verify(small_packed, name, capsys):
    url = small_packed([3], **FORMATS[name])
    ds = PackedDataset(url)
    path = Path(url) / ds.shards[0]["path"]
    stream = PackStream(url, 0, 1, seed=0)
    order = [stream.load(p).index for p in range(3)]  # position -> pack of the shard
    image = ds.read_pack(0, 1)["images"][0]
    data = path.read_bytes()
    if name == "arrow-zstd":  # compressed: the middle of pack 1's bytes
        start, end = pack_range(data, 1)
        flip(path, (start + end) // 2)
    else:  # the middle of pack 1's image, stored as it is (last in its Parquet column chunk,
        start, end = 0, len(data)  # after the page header's min/max statistics)
        if name == "parquet":
            chunk = pq.read_metadata(path).row_group(1).column(15)
            assert chunk.path_in_schema == "images.list.element"
            start, end = (
                chunk.data_page_offset,
                chunk.data_page_offset + chunk.total_compressed_size,
            )
        flip(path, data.rindex(image, start, end) + len(image) // 2)
        assert unchecked_images(path, FORMATS[name]["fmt"], 1) != [image]  # silent without us

    stream = PackStream(url, 0, 1, seed=0)
    with pytest.raises(ShardCorrupt, match=rf"{path.name}: pack 1 fails its (page checksum|CRC)"):
        stream.load(order.index(1))
    assert stream.load(order.index(0)).pack_id == "low-0-0"  # the other packs still read
    with pytest.raises(ShardCorrupt):
        PackedDataset(url).read_shard(0)
    assert shards_cmd.main(["show", url, "--pack", "1", "--no-tokens"]) == 2
    assert "fails its" in capsys.readouterr().err

    assert shards_cmd.main(["verify", url]) == 1
    out, err = capsys.readouterr()
    assert f"{ds.shards[0]['path']}: sha256 differs from the index" in err
    assert "1 shards checked, 1 problem(s)" in out


@pytest.mark.parametrize("name", ["parquet", "arrow-zstd"])
def test_no_flipped_byte_makes_a_reader_return_other_packs(small_packed, name):
    """Flip bytes all over one shard (head, every pack, footer; for Parquet also every byte of
    one page header, which its page CRC does not cover): every read either returns the packs
    as written or raises."""
    url = small_packed([2], **FORMATS[name])
    path = Path(url) / PackedDataset(url).shards[0]["path"]
    data = path.read_bytes()
    want = [PackedDataset(url).pack_table(0, k) for k in range(2)]
    positions = set(range(0, len(data), max(1, len(data) // 120)))
    if name == "parquet":
        chunk = pq.read_metadata(path).row_group(1).column(5)  # input_ids of pack 1
        positions |= set(range(chunk.data_page_offset, chunk.data_page_offset + 24))
    same = raised = 0
    for pos in sorted(positions):
        flip(path, pos)
        try:
            got = [PackedDataset(url).pack_table(0, k) for k in range(2)]
        except Exception:  # noqa: BLE001 - any error stops a run; what may not happen is below
            raised += 1
        else:
            assert all(g.equals(w) for g, w in zip(got, want, strict=True)), f"byte {pos}"
            same += 1
        flip(path, pos)  # restore
    assert raised > same > 0  # most flips are caught; a few land where they change nothing
    assert [PackedDataset(url).pack_table(0, k) for k in range(2)] == want
    assert isinstance(want[0], pa.Table)
