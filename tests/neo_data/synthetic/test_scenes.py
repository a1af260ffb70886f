"""The scene model: valid scenes only, a JSON round trip, and the sampler's limits."""

from __future__ import annotations

import json
import random

import pytest

from neo_data.synthetic.scenes import (
    FOREGROUNDS,
    MAX_GROUPS,
    POSITIONS,
    Scene,
    ShapeGroup,
    make_scene,
)


def test_scene_invariants_and_meta_round_trip():
    rng = random.Random(5)
    for _ in range(500):
        scene = make_scene(rng)
        assert Scene.from_meta(json.loads(json.dumps(scene.to_meta()))) == scene
        colours = [g.colour for g in scene.groups] + [scene.word_colour] * (scene.word is not None)
        assert all(c in FOREGROUNDS[scene.background] for c in colours)
        positions = [POSITIONS.index(g.position) for g in scene.groups]
        assert positions == sorted(set(positions))  # one group per cell, in reading order
        pairs = [(g.shape, g.colour) for g in scene.groups]
        assert len(pairs) == len(set(pairs))
        assert len(scene.groups) <= MAX_GROUPS


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="ShapeGroup.shape"):
        ShapeGroup("blob", "red", 1, "left")
    with pytest.raises(ValueError, match="groups"):
        Scene(background="white")


def test_make_scene_limits_groups_and_words():
    rng = random.Random(1)
    scenes = [make_scene(rng, max_groups=2, word_fraction=0.0) for _ in range(300)]
    assert all(s.word is None and 1 <= len(s.groups) <= 2 for s in scenes)
    assert {len(s.groups) for s in scenes} == {1, 2}
    with pytest.raises(ValueError, match="max_groups=0"):
        make_scene(rng, max_groups=0)
