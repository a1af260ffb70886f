"""Recounting a packed dataset from its files: ``neo shards verify`` finds a sample packed twice
and rows neither packed nor rejected even when every shard matches its checksum."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa

from neo_data.pack.report import recount
from pipelines.shards_cmd import main as shards_main


def test_recount_finds_duplicates_lost_rows_and_extra_rows():
    ids = pa.array(["a", "b", "c", "d"])
    assert recount(pa.array(["a", "b"]), pa.array(["c", "d"]), 4, ids) == []
    dup = recount(pa.array(["a", "b", "b"]), pa.array(["c"]), 4, ids)
    assert any("packed more than once, e.g. 'b'" in p for p in dup)
    assert any("neither packed nor rejected, e.g. 'd'" in p for p in dup)
    lost = recount(pa.array(["a"]), pa.array(["c"]), 4, ids)
    assert lost == [
        "4 rows in, but the shards hold 1 samples and rejected/ 1 rows",
        "2 input row(s) neither packed nor rejected, e.g. 'b'",
    ]
    extra = recount(pa.array(["a", "b", "x"]), pa.array(["c", "d"]), 5, ids)
    assert extra == ["1 row(s) packed or rejected more often than they are in the input, e.g. 'x'"]


def test_shards_verify_finds_a_sample_packed_twice(small_packed, capsys):
    """A shard copied under another name and listed in the index passes every checksum; the
    recount of sample ids refuses it."""
    url = small_packed([2, 3])
    assert shards_main(["verify", url]) == 0
    index = json.loads(Path(url, "index.json").read_text())
    first = index["shards"][0]
    copy = first["path"].replace("-0000.parquet", "-0009.parquet")
    shutil.copy(f"{url}/{first['path']}", f"{url}/{copy}")
    index["shards"].append({**first, "path": copy})
    Path(url, "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert shards_main(["verify", url]) == 1
    err = capsys.readouterr().err
    assert "4 sample id(s) packed more than once, e.g. 's0-0-a'" in err


def test_shards_verify_recounts_against_the_index_totals(small_packed, capsys):
    url = small_packed([2])
    index = json.loads(Path(url, "index.json").read_text())
    index["totals"] = {"samples_in": 6, "samples": 4, "dropped": {"image_decode_error": 2}}
    Path(url, "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert shards_main(["verify", url]) == 1  # rejected/ holds none of the 2 dropped rows
    assert (
        "6 rows in, but the shards hold 4 samples and rejected/ 0 rows" in capsys.readouterr().err
    )
