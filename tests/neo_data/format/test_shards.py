"""Packed shards without Ray: what ``write_shard`` records is what is on disk, the index is
refused before its shards exist, ``verify`` names every kind of damage, a reader fetches one
pack by its row group and refuses a dataset of another format or version; ``check_schema``
names the file and the field that differ."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neo_data.format.schema import (
    CURATED_SCHEMA,
    INDEX_NAME,
    PACKED_SCHEMA,
    SchemaMismatch,
    check_schema,
    shard_name,
)
from neo_data.format.shards import PackedDataset, write_index
from neo_data.format.storage import url_to_fs


def test_a_shard_record_describes_the_file_written(tmp_path, small_packed):
    ds = PackedDataset(small_packed([2]))
    (info,) = ds.shards
    data = (tmp_path / "packed-0" / info["path"]).read_bytes()
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
    assert (info["bucket"], info["rows"], info["packs"]) == ("low", 2, 2)
    # per pack: a 7-token sample (10 11 <img> I I </img> 12) and a 3-token text sample
    assert (info["samples"], info["text_samples"], info["images"]) == (4, 2, 2)
    assert (info["tokens"], info["image_tokens"]) == (20, 4)
    packs = list(ds.iter_packs())
    assert info["supervised_tokens"] == sum(p["num_supervised"] for p in packs) == 12  # (4 + 2) x 2
    assert [p["num_tokens"] for p in packs] == [10, 10]
    meta = pq.ParquetFile(tmp_path / "packed-0" / info["path"]).metadata
    assert meta.num_row_groups == 2  # one row group per pack: one range request reads one pack
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_the_index_is_refused_while_a_shard_is_missing(tmp_path, small_packed):
    url = small_packed([2, 1])
    index = json.loads((tmp_path / "packed-0" / INDEX_NAME).read_text())
    fs, root = url_to_fs(str(tmp_path / "other"))
    with pytest.raises(RuntimeError, match=r"1 shards missing, e\.g\. shards/low/shard-00000-0000"):
        write_index(fs, root, {**index, "shards": index["shards"][:1]})
    assert not (tmp_path / "other" / INDEX_NAME).exists()
    assert PackedDataset(url).verify() == []


def test_verify_names_a_changed_a_truncated_and_a_missing_shard(tmp_path, small_packed):
    url = small_packed([2, 2, 2])
    ds = PackedDataset(url)
    assert ds.verify() == []
    paths = [tmp_path / "packed-0" / s["path"] for s in ds.shards]
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size
    paths[1].write_bytes(paths[1].read_bytes()[:-1])
    paths[2].unlink()
    names = [s["path"] for s in ds.shards]
    assert ds.verify() == [
        f"{names[0]}: sha256 differs from the index",
        f"{names[1]}: {ds.shards[1]['bytes'] - 1} bytes, index says {ds.shards[1]['bytes']}",
        f"{names[2]}: missing",
    ]


def test_one_pack_is_read_by_its_row_group(small_packed):
    ds = PackedDataset(small_packed([3, 2], buckets=("low", "high")))
    assert ds.buckets == ["low", "high"]
    assert ds.read_pack(0, 2)["pack_id"] == "low-0-2"
    assert ds.read_pack(1, 0)["pack_id"] == "high-1-0"
    assert ds.read_pack(1, 1)["sample_ids"] == ["s1-1-a", "s1-1-b"]
    with pytest.raises(IndexError, match=r"pack 2 out of range 0\.\.1"):
        ds.read_pack(1, 2)
    assert [p["pack_id"] for p in ds.iter_packs(["high"])] == ["high-1-0", "high-1-1"]
    assert len(list(ds.iter_packs())) == 5
    table = ds.read_shard(0)
    check_schema(table.schema, PACKED_SCHEMA, "shard 0")
    assert table.schema.metadata == PACKED_SCHEMA.metadata


def test_a_dataset_without_index_or_of_another_format_is_refused(tmp_path, small_packed):
    with pytest.raises(FileNotFoundError, match="no index.json"):
        PackedDataset(str(tmp_path / "nothing"))
    url = small_packed([1])
    path = tmp_path / "packed-0" / INDEX_NAME
    index = json.loads(path.read_text())
    path.write_text(json.dumps({**index, "schema_version": 2}))
    with pytest.raises(SchemaMismatch, match="schema version 2, this neo reads 1"):
        PackedDataset(url)
    path.write_text(json.dumps({**index, "format": "neo.curated"}))
    with pytest.raises(SchemaMismatch, match="format 'neo.curated', expected neo.packed"):
        PackedDataset(url)


def test_check_schema_names_the_file_and_the_field():
    check_schema(CURATED_SCHEMA, CURATED_SCHEMA, "same")
    with pytest.raises(
        SchemaMismatch, match="^x.parquet: is a neo.packed file, expected neo.curated$"
    ):
        check_schema(PACKED_SCHEMA, CURATED_SCHEMA, "x.parquet")
    v2 = CURATED_SCHEMA.with_metadata({**CURATED_SCHEMA.metadata, b"neo.schema_version": b"2"})
    with pytest.raises(SchemaMismatch, match="schema version 2, this neo reads version 1"):
        check_schema(v2, CURATED_SCHEMA, "x")
    no_kind = CURATED_SCHEMA.remove(CURATED_SCHEMA.get_field_index("kind"))
    with pytest.raises(SchemaMismatch, match="required column 'kind' is missing"):
        check_schema(no_kind, CURATED_SCHEMA, "x")
    no_meta = CURATED_SCHEMA.remove(CURATED_SCHEMA.get_field_index("meta"))
    check_schema(no_meta, CURATED_SCHEMA, "x")  # an optional column may be absent
    i = CURATED_SCHEMA.get_field_index("text")
    as_int = CURATED_SCHEMA.set(i, pa.field("text", pa.int64()))
    with pytest.raises(SchemaMismatch, match="column 'text' has type int64, expected string"):
        check_schema(as_int, CURATED_SCHEMA, "x")
    large = CURATED_SCHEMA.set(i, pa.field("text", pa.large_string()))
    check_schema(large, CURATED_SCHEMA, "x")  # large and small strings are one type here


def test_shard_names_carry_bucket_window_and_number():
    assert shard_name("low", 3, 12) == "shards/low/shard-00003-0012.parquet"
