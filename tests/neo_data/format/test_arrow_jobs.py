"""Arrow IPC shards end to end (slow): the pack job writes them (the same packs as its Parquet
run), ``neo shards`` and the browser read them, and the loader reads them from S3 (moto) by
range requests, catching a damaged object there too."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import s3fs

from neo_data.browser.server import BackgroundServer
from neo_data.format.schema import ShardCorrupt
from neo_data.format.shards import PackedDataset, convert_dataset
from neo_data.loader import TOKEN_COLUMNS, PackStream
from neo_data.manifest import load_manifest
from neo_data.pack.job import run_pack
from pipelines import cli
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def neo(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["shards", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_pack_job_writes_arrow_shards_that_every_reader_takes(demo_packed, tmp_path, capsys):
    root = Path(demo_packed)
    manifest = load_manifest(
        REPO / "manifests" / "demo.yaml",
        {
            "data.curated": [str(root / "curated")],
            "data.packed": str(tmp_path / "arrow"),
            "pack.format": "arrow",
            "pack.arrow_compression": "lz4",
        },
    )
    url = run_pack(manifest).output
    arrow, parquet = PackedDataset(url), PackedDataset(str(root / "packed"))
    assert {s["format"] for s in arrow.shards} == {"arrow"}
    assert [s["path"] for s in arrow.shards] == [
        s["path"].replace(".parquet", ".arrow") for s in parquet.shards
    ]
    assert list(arrow.iter_packs()) == list(parquet.iter_packs())  # the same packs
    for key in ("packs", "samples", "tokens", "images", "samples_in", "dropped"):
        assert arrow.index["totals"][key] == parquet.index["totals"][key]

    rc, out, _ = neo(capsys, "ls", url, "--json")
    listed = json.loads(out)
    assert rc == 0 and {s["format"] for s in listed["shard_list"]} == {"arrow"}
    assert neo(capsys, "stats", url)[0] == 0
    rc, out, _ = neo(capsys, "verify", url)
    assert rc == 0 and f"{len(arrow.shards)} shards checked, 0 problem(s)" in out
    k = next(i for i in range(len(arrow.shards)) if arrow.read_pack(i, 0)["images"])
    pack = arrow.read_pack(k, 0)  # the first pack of the first shard with images
    rc, out, _ = neo(capsys, "show", url, "--pack", pack["pack_id"], "--no-tokens")
    assert rc == 0 and f"pack {pack['pack_id']}" in out
    with BackgroundServer(url) as server:
        base = server.base_url + f"/ds/0/shard/{k}"
        with urllib.request.urlopen(base) as r:
            assert arrow.shards[k]["path"] in r.read().decode() and r.status == 200
        with urllib.request.urlopen(base + "/pack/0/image/0") as r:
            assert r.read() == pack["images"][0]


def test_the_loader_reads_arrow_shards_from_s3_and_catches_damage(small_packed, s3_bucket):
    local = small_packed([3, 2], ("low", "high"), fmt="arrow")
    url = f"{s3_bucket}/arrow"
    convert_dataset(PackedDataset(local), url, "arrow")  # the same bytes, on the object store
    remote = PackedDataset(url)
    assert [s["sha256"] for s in remote.shards] == [
        s["sha256"] for s in PackedDataset(local).shards
    ]
    want, got = PackStream(local, 0, 1, seed=1), PackStream(url, 0, 1, seed=1)
    for position in range(5):
        p, q = want.load(position), got.load(position)
        assert p.pack_id == q.pack_id
        for c in TOKEN_COLUMNS:
            np.testing.assert_array_equal(p.columns[c], q.columns[c])
        assert [i.tobytes() for i in p.images] == [i.tobytes() for i in q.images]

    fs = s3fs.S3FileSystem()
    key = f"{url}/{remote.shards[0]['path']}"
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 0x10  # inside one of the packs
    fs.pipe_file(key, bytes(data))
    fresh = PackedDataset(url)
    errors = []
    for k in range(3):
        try:
            fresh.pack_table(0, k)
        except ShardCorrupt as e:
            errors.append(str(e))
    assert len(errors) == 1 and "fails its CRC-32 check" in errors[0]
    assert fresh.verify() == [f"{remote.shards[0]['path']}: sha256 differs from the index"]
