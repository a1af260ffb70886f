"""The pack job across reruns and with sources in separate files: a rerun continues exactly the
plan its markers cover or refuses naming what changed; verification recounts the outputs; the
text ratio holds over the whole input; a kill leaves no temporary file behind."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from neo_data.format.shards import PackedDataset
from neo_data.format.storage import OutputConflict
from neo_data.manifest import parse_manifest
from neo_data.pack.job import run_pack
from tests.helpers import caption_row, image_bytes, text_row, write_curated

pytestmark = pytest.mark.slow

MANIFEST = """
name: resume
stage: pretrain
data:
  curated: ["{curated}/*.parquet"]
  packed: {packed}
pack:
  seq_len: 1024
  min_pixels: 1024
  max_pixels: 16384
  buckets:
    - {{name: low, max_image_tokens: 4}}
    - {{name: high, max_image_tokens: 16}}
  text_ratio: 0.3
  packs_per_shard: 4
  window_samples: 50
"""


def manifest(curated, packed):
    return parse_manifest(MANIFEST.format(curated=curated, packed=packed), "resume.yaml")


def captions(n: int, start: int = 0, source: str = "cap") -> list[dict]:
    small, big = image_bytes(64, 64), image_bytes(128, 96)
    return [
        caption_row(i, f"a red square number {i}", [small if i % 3 else big], source)
        for i in range(start, start + n)
    ]


def texts(n: int, start: int = 0) -> list[dict]:
    return [text_row(i, f"a short story, number {i}. " * 3) for i in range(start, start + n)]


@pytest.fixture()
def curated(tmp_path):
    d = tmp_path / "curated"
    d.mkdir()
    write_curated(str(d / "b-captions.parquet"), captions(100), row_group_size=25)
    write_curated(str(d / "c-texts.parquet"), texts(100), row_group_size=25)
    return d


def packed_ids(output: str) -> list[str]:
    ds = PackedDataset(output)
    return [s for i in range(len(ds.shards)) for s in ds.read_shard(i)["sample_ids"].to_pylist()
            for s in s]  # fmt: skip


def test_the_text_ratio_holds_over_the_whole_input(ray_local, curated, tmp_path):
    """100 captions and 100 texts in two files: text windows used to keep all their text
    (0.50); the quota is decided over the input: round(0.3 / 0.7 * 100) = 43 texts kept, in
    both buckets, and the surplus is rejected as text_over_ratio."""
    result = run_pack(manifest(curated, tmp_path / "out"))
    t = result.index["totals"]
    assert t["samples_in"] == 200
    assert t["text_samples"] == 43 and t["samples"] == 143
    assert t["dropped"] == {"text_over_ratio": 57}
    assert all(b["text_samples"] > 0 for b in result.index["buckets"])


def test_a_rerun_after_an_input_was_added_is_refused_naming_it(ray_local, curated, tmp_path):
    """The first run stopped (index and the last window's marker gone), then one more file
    matched the glob (sorted first, so every window would shift): the rerun refuses, naming the
    new file and how to start over, and leaves what was written as it was."""
    out = tmp_path / "out"
    m = manifest(curated, out)
    run_pack(m)
    (out / "index.json").unlink()
    markers = sorted((out / "_work" / "windows").iterdir())
    markers[-1].unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_curated(str(curated / "a-more.parquet"), captions(40, 500, "more"), row_group_size=20)
    with pytest.raises(OutputConflict, match=r"a-more\.parquet.*added") as e:
        run_pack(m)
    assert "delete" in str(e.value) and str(out) in str(e.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # starting over as the message says gives every row once
    shutil.rmtree(out)
    result = run_pack(m)
    ids = packed_ids(result.output)
    rejected = pq.read_table(f"{out}/rejected").column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) and not set(ids) & set(rejected)
    assert len(ids) + len(rejected) == result.index["totals"]["samples_in"] == 240


def test_a_rerun_after_success_with_a_changed_input_is_refused(ray_local, curated, tmp_path):
    out = tmp_path / "out"
    m = manifest(curated, out)
    run_pack(m)
    write_curated(str(curated / "c-texts.parquet"), texts(90), row_group_size=25)
    with pytest.raises(OutputConflict, match=r"c-texts\.parquet.*changed"):
        run_pack(m)


def test_a_rerun_removes_the_temporaries_a_kill_left(ray_local, curated, tmp_path):
    out = tmp_path / "out"
    m = manifest(curated, out)
    first = run_pack(m)
    (out / "index.json").unlink()
    stale = out / "shards" / "low" / ("shard-00000-0000.parquet.tmp-" + "ab" * 16)
    stale.write_bytes(b"partial")
    again = run_pack(m)
    assert not stale.exists()
    assert [s["sha256"] for s in again.index["shards"]] == [
        s["sha256"] for s in first.index["shards"]
    ]
