"""The demo dataset: deterministic, split into named files, in the curated schema; held-out scenes
the training set never shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from neo_data.format.schema import CURATED_SCHEMA, check_schema
from neo_data.synthetic.dataset import (
    held_out_scenes,
    training_scenes,
    write_demo_dataset,
)
from neo_data.synthetic.texts import caption_for
from tests.neo_data.synthetic.demo_data import COUNTS, ROWS_PER_FILE, of_kind, read_rows, scenes_of


def test_files_are_named_split_and_counted(dataset):
    paths, rows = dataset
    names = [Path(p).name for p in paths]
    assert names == (
        [f"captions-{i:05d}.parquet" for i in range(3)]
        + [f"conversations-{i:05d}.parquet" for i in range(4)]
        + [f"text-{i:05d}.parquet" for i in range(2)]
    )
    assert all(pq.read_metadata(p).num_rows <= ROWS_PER_FILE for p in paths)
    for kind, source, count in [
        ("caption", "demo-captions", COUNTS["captions"]),
        ("conversation", "demo-conversations", COUNTS["conversations"]),
        ("text", "demo-text", COUNTS["texts"]),
    ]:
        rows_of_kind = of_kind(rows, kind)
        assert [r["row"] for r in rows_of_kind] == list(range(count))
        assert {r["source"] for r in rows_of_kind} == {source}
        assert all(r["text_only"] == (kind == "text") for r in rows_of_kind)
    assert len({r["sample_id"] for r in rows}) == len(rows)


def test_written_files_validate_against_the_curated_schema(dataset):
    paths, _ = dataset
    for path in paths:
        schema = pq.read_schema(path)
        check_schema(schema, CURATED_SCHEMA, path)
        assert schema.metadata[b"neo.schema"] == b"neo.curated"
        assert schema.remove_metadata().equals(CURATED_SCHEMA.remove_metadata())


def test_each_kind_fills_only_its_own_column(dataset):
    _, rows = dataset
    own = {"caption": "captions", "conversation": "conversation", "text": "text"}
    for row in rows:
        for kind, column in own.items():
            assert (row[column] is not None) == (row["kind"] == kind), (row["sample_id"], column)
        assert (len(row["images"]) == 0) == (row["kind"] == "text")


def test_writes_through_fsspec(tmp_path):
    """A non-local URL (fsspec's memory filesystem stands in for s3://) round-trips."""
    url = f"memory://neo-demo-test/{tmp_path.name}"
    try:
        paths = write_demo_dataset(url, captions=2, conversations=1, texts=1, seed=1)
        assert paths == [
            f"{url}/captions-00000.parquet",
            f"{url}/conversations-00000.parquet",
            f"{url}/text-00000.parquet",
        ]
        fs, _ = fsspec.core.url_to_fs(url)
        with fs.open(paths[0], "rb") as f:
            assert pq.read_table(f).num_rows == 2
    finally:
        fs, root = fsspec.core.url_to_fs(url)
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="texts=-1"):
        write_demo_dataset("memory://unused", texts=-1)
    with pytest.raises(ValueError, match="rows_per_file=0"):
        write_demo_dataset("memory://unused", rows_per_file=0)


def test_same_seed_same_rows_other_seed_other_rows(dataset, tmp_path):
    _, rows = dataset
    again = write_demo_dataset(str(tmp_path / "a"), seed=0, rows_per_file=7, **COUNTS)
    assert read_rows(again) == rows  # file split does not change content
    other = read_rows(write_demo_dataset(str(tmp_path / "b"), seed=1, **COUNTS))
    hashes = {i["sha256"] for r in rows for i in r["images"]}
    assert hashes.isdisjoint(i["sha256"] for r in other for i in r["images"])
    assert [r["text"] for r in of_kind(rows, "text")] != [r["text"] for r in of_kind(other, "text")]


def test_smaller_dataset_is_a_prefix(dataset, tmp_path):
    _, rows = dataset
    small = read_rows(write_demo_dataset(str(tmp_path), captions=5, conversations=3, texts=2))
    for kind, n in [("caption", 5), ("conversation", 3), ("text", 2)]:
        assert of_kind(small, kind) == of_kind(rows, kind)[:n]


_DIGEST = """
import hashlib, json
from neo_data.synthetic.dataset import ROW_BUILDERS
rows = [b(0, r) for b in ROW_BUILDERS.values() for r in range(3)]
for row in rows:
    for image in row["images"]:
        image["bytes"] = hashlib.sha256(image["bytes"]).hexdigest()
print(hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest())
"""


def test_rows_do_not_depend_on_the_process():
    """String hashing is salted per process; the generator must not depend on it."""
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True
        )
        digests.add(result.stdout.strip())
    assert len(digests) == 1


def test_held_out_scenes_are_new_distinct_and_deterministic(dataset):
    _, rows = dataset
    scenes = [
        s for row in rows for key in ("scenes", "described_scenes") for s in scenes_of(row, key)
    ]
    shown = {caption_for(s) for s in scenes}
    assert len(shown) > 100
    held = held_out_scenes(0, 200, **COUNTS)
    captions = [caption_for(s) for s in held]
    assert len(held) == 200 and len(set(captions)) == 200
    assert shown.isdisjoint(captions)
    assert held == held_out_scenes(0, 200, **COUNTS)
    assert held != held_out_scenes(1, 200, **COUNTS)


def test_held_out_scenes_skip_training_scenes_in_a_crowded_space():
    """With 10,000 training scenes, many held-out draws collide: all must be skipped."""
    training = {caption_for(s) for s in training_scenes(0, 10_000, 0, 0)}
    held = held_out_scenes(0, 500, captions=10_000, conversations=0, texts=0)
    assert training.isdisjoint(caption_for(s) for s in held)
