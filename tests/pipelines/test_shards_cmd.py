"""``neo shards ls|stats|show`` on a dataset made by ``neo demo`` (local paths and S3 on moto)."""

from __future__ import annotations

import io
import json
import shutil

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neo_data.format.shards import PackedDataset
from pipelines import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(demo_packed) -> str:
    """The demo set, curated and packed (``<root>/curated``, ``<root>/packed``)."""
    return demo_packed


def neo(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["shards", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_ls_a_dataset_lists_its_shards(demo, capsys):
    packed = f"{demo}/packed"
    index = PackedDataset(packed).index
    rc, out, _ = neo(capsys, "ls", packed)
    assert rc == 0
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "dataset",
        "name",
        "stage",
        "packs",
        "samples",
        "tokens",
        "bytes",
        "shards",
    ]
    t = index["totals"]
    assert row.split() == [
        ".",
        "demo",
        "pretrain",
        f"{t['packs']:,}",
        f"{t['samples']:,}",
        f"{t['tokens']:,}",
        f"{t['bytes']:,}",
        str(len(index["shards"])),
    ]
    for i, s in enumerate(index["shards"]):
        line = next(ln for ln in out.splitlines() if f" {s['path']} " in ln)
        assert line.split()[:6] == [
            str(i),
            s["path"],
            s["bucket"],
            f"{s['bytes']:,}",
            str(s["packs"]),
            str(s["samples"]),
        ]

    rc, out, _ = neo(capsys, "ls", packed, "--json")
    listed = json.loads(out)
    assert rc == 0 and listed["tokens"] == t["tokens"]
    # the sizes ls reports are the files' sizes
    fs, _ = fsspec.core.url_to_fs(packed)
    for s in listed["shard_list"]:
        assert fs.size(f"{packed}/{s['path']}") == s["bytes"]


def test_ls_a_prefix_finds_every_dataset(demo, tmp_path, capsys):
    shutil.copytree(f"{demo}/packed", tmp_path / "runs" / "one" / "packed")
    shutil.copytree(f"{demo}/packed", tmp_path / "runs" / "two")
    (tmp_path / "runs" / "three" / "_work").mkdir(parents=True)
    rc, out, _ = neo(capsys, "ls", str(tmp_path / "runs"), "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["dataset"] for r in rows] == ["one/packed", "three", "two"]
    assert rows[0]["url"] == str(tmp_path / "runs" / "one" / "packed")
    assert rows[1]["name"] is None and "unfinished" in rows[1]["problem"]
    rc, out, _ = neo(capsys, "ls", str(tmp_path / "runs"))
    assert "three: unfinished" in out

    (tmp_path / "empty").mkdir()
    rc, _, err = neo(capsys, "ls", str(tmp_path / "empty"))
    assert rc == 1 and "no packed dataset" in err
    rc, _, err = neo(capsys, "ls", str(tmp_path / "missing"))
    assert rc == 2 and "no such directory" in err


def test_ls_on_s3(demo, s3_bucket, capsys):
    fs, _ = fsspec.core.url_to_fs(s3_bucket)
    bucket = s3_bucket.removeprefix("s3://")
    fs.put(f"{demo}/packed", f"{bucket}/team/a/packed", recursive=True)
    fs.put(f"{demo}/packed", f"{bucket}/team/b", recursive=True)
    rc, out, _ = neo(capsys, "ls", f"{s3_bucket}/team", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [(r["dataset"], r["url"]) for r in rows] == [
        ("a/packed", f"{s3_bucket}/team/a/packed"),
        ("b", f"{s3_bucket}/team/b"),
    ]
    index = PackedDataset(f"{demo}/packed").index
    assert all(r["samples"] == index["totals"]["samples"] for r in rows)
    rc, out, _ = neo(capsys, "ls", f"{s3_bucket}/team/b")
    assert rc == 0
    assert all(s["path"] in out for s in index["shards"])


def test_stats_counts_every_row_per_source(demo, capsys):
    rc, out, _ = neo(capsys, "stats", f"{demo}/packed")
    assert rc == 0
    assert "text ratio" in out and "fill" in out and "dropped text_over_ratio" in out
    curated = pq.read_table(f"{demo}/curated", columns=["source"])["source"]
    rows_in = {r["values"]: r["counts"] for r in curated.value_counts().to_pylist()}
    table = out.split("sources (rows in = packed + dropped)\n")[1].splitlines()
    for line in table[1:]:
        source, n_in, packed, _text, dropped = line.split()[:5]
        assert int(n_in.replace(",", "")) == rows_in.pop(source)
        assert int(n_in.replace(",", "")) == int(packed.replace(",", "")) + int(
            dropped.replace(",", "")
        )
    assert rows_in == {}

    rc, out, _ = neo(capsys, "stats", f"{demo}/packed", "--json")
    stats = json.loads(out)
    assert sum(s["packed"] for s in stats["sources"].values()) == stats["totals"]["samples"]


def test_show_prints_sample_text_and_tokens(demo, capsys):
    packed = f"{demo}/packed"
    ds = PackedDataset(packed)
    pack = ds.read_pack(0, 0)
    curated = {r["sample_id"]: r for r in pq.read_table(f"{demo}/curated").to_pylist()}
    k = next(k for k, s in enumerate(pack["sample_ids"]) if curated[s]["kind"] == "conversation")
    rc, out, _ = neo(capsys, "show", packed, "--shard", "0", "--pack", "0", "--sample", str(k))
    assert rc == 0
    row = curated[pack["sample_ids"][k]]
    assert f"sample {k}: {row['sample_id']} from {row['source']}" in out
    for turn in row["conversation"]:
        first_line = turn["content"].split("\n")[0]
        assert f"{turn['role'] + ':':<10} {first_line}" in out
    assert "'<IMG_CONTEXT>'" in out and "more image tokens" in out
    assert "--save-images DIR writes them" in out
    # a pack id names the same pack
    rc, by_id, _ = neo(capsys, "show", packed, "--pack", pack["pack_id"], "--sample", str(k))
    assert rc == 0 and by_id == out

    rc, _, err = neo(capsys, "show", packed, "--pack", "999")
    assert rc == 2 and "pack 999 out of range" in err
    rc, _, err = neo(capsys, "show", packed, "--pack", "nope-1")
    assert rc == 2 and "no pack id 'nope-1'" in err
    rc, _, err = neo(capsys, "show", packed, "--pack", "0", "--sample", "999")
    assert rc == 2 and "no sample 999" in err


def test_show_save_images_writes_the_stored_bytes(demo, tmp_path, capsys):
    packed = f"{demo}/packed"
    pack = PackedDataset(packed).read_pack(0, 0)
    out_dir = tmp_path / "imgs"
    rc, out, _ = neo(
        capsys, "show", packed, "--pack", "0", "--no-tokens", "--save-images", str(out_dir)
    )
    assert rc == 0
    files = sorted(out_dir.iterdir())
    assert len(files) == len(pack["images"]) > 0
    assert "pos" not in out  # --no-tokens
    for o, f in enumerate(files):
        assert f.name.startswith(f"{pack['pack_id']}-img{o:03d}.")
        assert f.read_bytes() == pack["images"][o]
        with Image.open(io.BytesIO(f.read_bytes())) as im:
            assert im.size == (pack["image_widths"][o], pack["image_heights"][o])
        assert f"wrote {f}" in out


def test_serve_refuses_a_url_without_datasets(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = neo(capsys, "serve", str(tmp_path / "empty"))
    assert rc == 2 and "no packed dataset (index.json)" in err
