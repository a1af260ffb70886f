"""Scoring captions: one-group captions parse back to their scene, and the score counts exact
matches and each attribute (what the learning benchmark's accuracy figures mean)."""

from __future__ import annotations

import random

from neo_data.synthetic.evaluate import ATTRS, attributes, score
from neo_data.synthetic.scenes import Scene, ShapeGroup, make_scene
from neo_data.synthetic.texts import caption_for


def test_captions_of_one_group_scenes_parse_back_to_their_scene():
    rng = random.Random(0)
    for _ in range(200):
        scene = make_scene(rng, max_groups=1, word_fraction=0.0)
        g = scene.groups[0]
        got = attributes(caption_for(scene))
        assert got == {"count": g.count, "colour": g.colour, "shape": g.shape,
                       "position": g.position, "background": scene.background}  # fmt: skip


def test_score_counts_exact_matches_and_each_attribute():
    scenes = [
        Scene("white", (ShapeGroup("circle", "red", 2, "top left"),)),
        Scene("black", (ShapeGroup("star", "yellow", 1, "center"),)),
    ]
    truths = [caption_for(s) for s in scenes]
    answers = [truths[0], "A yellow star on the left, on a black background."]
    res = score(answers, truths, scenes)
    assert res["exact"] == 0.5
    assert (res["count"], res["colour"], res["shape"], res["background"]) == (1.0, 1.0, 1.0, 1.0)
    assert res["position"] == 0.5
    garbled = score(["The the the", ""], truths, scenes)
    assert all(garbled[k] == 0.0 for k in ("exact", *ATTRS))


def test_held_out_table_reads_the_image_attributes_and_the_other_image_baseline():
    """Two scenes on one background that differ in colour: perfect answers score 1 on every
    attribute, and against the other image still 1 on background but 0 on colour."""
    from neo_data.synthetic.evaluate import chance, format_table, held_out_table
    from neo_data.synthetic.scenes import FOREGROUNDS

    scenes = [
        Scene("white", (ShapeGroup("circle", "red", 2, "top left"),)),
        Scene("white", (ShapeGroup("circle", "blue", 2, "top left"),)),
    ]
    table = held_out_table([caption_for(s) for s in scenes], scenes)
    rows = table["attributes"]
    assert all(rows[a]["accuracy"] == 1.0 for a in ATTRS)
    assert rows["background"]["other_image"] == 1.0 and rows["colour"]["other_image"] == 0.0
    assert table["exact"] == 1.0 and table["exact_other_image"] == 0.0
    assert table["well_formed"] == 1.0
    assert rows["colour"]["chance"] == 1 / len(FOREGROUNDS["white"])
    assert chance(scenes)["shape"] == 1 / 7 and chance(scenes)["position"] == 1 / 9
    garbled = held_out_table(["The, on a the top", "red red red"], scenes)
    assert garbled["well_formed"] == 0.0
    assert all(garbled["attributes"][a]["accuracy"] == 0.0 for a in ATTRS)
    text = format_table(table)
    assert "background" in text and "100.0%" in text and "2 held-out scenes" in text
