"""The benchmark scripts' own logic: bench_learning's caption scoring (what its accuracy
figures mean) and a CPU smoke run of bench_vs_hf (the GPU comparison's code path)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from neo_data.synthetic import scenes as demo
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import bench_learning  # noqa: E402

from tests.helpers import REPO


def test_captions_of_one_group_scenes_parse_back_to_their_scene():
    rng = random.Random(0)
    for _ in range(200):
        scene = demo.make_scene(rng, max_groups=1, word_fraction=0.0)
        g = scene.groups[0]
        got = bench_learning.attributes(demo.caption_for(scene))
        assert got == {"count": g.count, "colour": g.colour, "shape": g.shape,
                       "position": g.position, "background": scene.background}  # fmt: skip


def test_score_counts_exact_matches_and_each_attribute():
    scenes = [
        demo.Scene("white", (demo.ShapeGroup("circle", "red", 2, "top left"),)),
        demo.Scene("black", (demo.ShapeGroup("star", "yellow", 1, "center"),)),
    ]
    truths = [demo.caption_for(s) for s in scenes]
    answers = [truths[0], "A yellow star on the left, on a black background."]
    res = bench_learning.score(answers, truths, scenes)
    assert res["exact"] == 0.5
    assert (res["count"], res["colour"], res["shape"], res["background"]) == (1.0, 1.0, 1.0, 1.0)
    assert res["position"] == 0.5
    garbled = bench_learning.score(["The the the", ""], truths, scenes)
    assert all(garbled[k] == 0.0 for k in ("exact", *bench_learning.ATTRS))


def test_make_scene_limits_groups_and_words():
    rng = random.Random(1)
    scenes = [demo.make_scene(rng, max_groups=2, word_fraction=0.0) for _ in range(300)]
    assert all(s.word is None and 1 <= len(s.groups) <= 2 for s in scenes)
    assert {len(s.groups) for s in scenes} == {1, 2}
    with pytest.raises(ValueError, match="max_groups=0"):
        demo.make_scene(rng, max_groups=0)


def test_bench_vs_hf_runs_on_cpu():
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_vs_hf.py", "--preset", "debug", "--device", "cpu",
         "--seq-len", "512", "--packs", "1", "--repeats", "1", "--warmup", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {line.split("  ")[0]: line.split() for line in run.stdout.splitlines()}
    baseline = next(v for k, v in rows.items() if k.startswith("HF Qwen3, padded"))
    neo = next(v for k, v in rows.items() if k.startswith("NEO, packed rows"))
    assert baseline[-2] == "1.00"  # the ratio column of the baseline
    assert float(neo[-2]) > 0 and "padding)" in run.stdout
