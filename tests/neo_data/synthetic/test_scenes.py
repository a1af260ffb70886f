"""The demo dataset: deterministic, in the curated schema, and its text exactly true of its pixels."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neo_data.format.schema import CURATED_SCHEMA, IMAGE_PLACEHOLDER, check_schema
from neo_data.synthetic import scenes as demo

COUNTS = {"captions": 40, "conversations": 60, "texts": 20}
ROWS_PER_FILE = 16
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def _read_rows(paths: list[str]) -> list[dict[str, Any]]:
    return [row for path in paths for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("demo")
    paths = demo.write_demo_dataset(str(out), seed=0, rows_per_file=ROWS_PER_FILE, **COUNTS)
    return paths, _read_rows(paths)


def _of_kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == kind]


def _scenes(row: dict[str, Any], key: str = "scenes") -> list[demo.Scene]:
    """The scenes of a row's images (``scenes``) or of a text's paragraphs (``described_scenes``)."""
    return [demo.Scene.from_meta(m) for m in json.loads(row["meta"]).get(key, [])]


# --- files, counts, schema --------------------------------------------------------------------


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
        of_kind = _of_kind(rows, kind)
        assert [r["row"] for r in of_kind] == list(range(count))
        assert {r["source"] for r in of_kind} == {source}
        assert all(r["text_only"] == (kind == "text") for r in of_kind)
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
        paths = demo.write_demo_dataset(url, captions=2, conversations=1, texts=1, seed=1)
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
        demo.write_demo_dataset("memory://unused", texts=-1)
    with pytest.raises(ValueError, match="rows_per_file=0"):
        demo.write_demo_dataset("memory://unused", rows_per_file=0)
    with pytest.raises(ValueError, match="ShapeGroup.shape"):
        demo.ShapeGroup("blob", "red", 1, "left")
    with pytest.raises(ValueError, match="groups"):
        demo.Scene(background="white")


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_rows_other_seed_other_rows(dataset, tmp_path):
    _, rows = dataset
    again = demo.write_demo_dataset(str(tmp_path / "a"), seed=0, rows_per_file=7, **COUNTS)
    assert _read_rows(again) == rows  # file split does not change content
    other = _read_rows(demo.write_demo_dataset(str(tmp_path / "b"), seed=1, **COUNTS))
    hashes = {i["sha256"] for r in rows for i in r["images"]}
    assert hashes.isdisjoint(i["sha256"] for r in other for i in r["images"])
    assert [r["text"] for r in _of_kind(rows, "text")] != [
        r["text"] for r in _of_kind(other, "text")
    ]


def test_smaller_dataset_is_a_prefix(dataset, tmp_path):
    _, rows = dataset
    small = _read_rows(demo.write_demo_dataset(str(tmp_path), captions=5, conversations=3, texts=2))
    for kind, n in [("caption", 5), ("conversation", 3), ("text", 2)]:
        assert _of_kind(small, kind) == _of_kind(rows, kind)[:n]


_DIGEST = """
import hashlib, json
from neo_data.synthetic import scenes as demo
rows = [b(0, r) for b in demo.ROW_BUILDERS.values() for r in range(3)]
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


# --- images -----------------------------------------------------------------------------------


def test_images_decode_to_their_stated_size_format_and_hash(dataset):
    _, rows = dataset
    formats, aspects = set(), []
    for row in rows:
        image_meta = json.loads(row["meta"]).get("images", [])
        assert len(_scenes(row)) == len(image_meta)
        assert len(image_meta) == len(row["images"])
        for image, meta in zip(row["images"], image_meta, strict=True):
            assert hashlib.sha256(image["bytes"]).hexdigest() == image["sha256"]
            with Image.open(io.BytesIO(image["bytes"])) as im:
                assert (
                    im.size == (image["width"], image["height"]) == (meta["width"], meta["height"])
                )
                assert im.format == PIL_FORMATS[meta["format"]]
                formats.add(im.format)
            assert min(im.size) >= demo.MIN_SIDE and max(im.size) <= demo.MAX_SIDE
            aspects.append(max(im.size) / min(im.size))
        if row["kind"] == "caption":
            assert (
                row["url"]
                == f"demo://captions/{row['row']:06d}.{demo.EXTENSIONS[image_meta[0]['format']]}"
            )
    assert formats == {"JPEG", "PNG", "WEBP"}
    assert max(aspects) >= 3.0 and min(aspects) < 1.5  # wide/tall ones and near-square ones


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_stored_image_shows_the_scene_in_meta(dataset):
    """Decoded bytes match a lossless re-render of the meta scene (up to JPEG/WebP loss)."""
    _, rows = dataset
    for row in rows:
        meta = json.loads(row["meta"])
        for image, scene, im_meta in zip(
            row["images"], _scenes(row), meta.get("images", []), strict=True
        ):
            size = (image["width"], image["height"])
            reference = _rgb(demo.render_scene(scene, size, "png"))
            stored = _rgb(image["bytes"])
            if im_meta["format"] == "png":
                assert np.array_equal(stored, reference)
            else:
                assert np.abs(stored - reference).mean() < 6.0, row["sample_id"]


def _check_pixels(scene: demo.Scene, size: tuple[int, int]) -> None:
    """Every drawn pixel is where the caption says, in the colour it says, in ``count`` blobs."""
    from scipy import ndimage

    arr = _rgb(demo.render_scene(scene, size, "png"))
    height, width = arr.shape[:2]
    ink = (arr != demo.PALETTE[scene.background]).any(-1)
    if scene.word is not None:
        row = demo.WORD_POSITIONS.index(scene.word_position)
        ys, xs = np.nonzero(ink)
        assert row * height // 3 <= ys.min() and ys.max() < (row + 1) * height // 3
        assert width / 3 - 2 <= (xs.min() + xs.max()) / 2 <= 2 * width / 3 + 2  # middle column
        return
    explained = np.zeros_like(ink)
    for g in scene.groups:
        r, c = divmod(demo.POSITIONS.index(g.position), 3)
        cell = (
            slice(r * height // 3, (r + 1) * height // 3),
            slice(c * width // 3, (c + 1) * width // 3),
        )
        mine = (arr[cell] == demo.PALETTE[g.colour]).all(-1)
        assert np.array_equal(mine, ink[cell]), g  # no other colour drawn in this cell
        assert ndimage.label(mine, structure=np.ones((3, 3)))[1] == g.count, g
        explained[cell] = mine
    assert np.array_equal(explained, ink)  # nothing drawn outside the groups' cells


def test_rendered_pixels_match_the_caption(dataset):
    _, rows = dataset
    for row in rows:
        for scene, image in zip(_scenes(row), row["images"], strict=True):
            _check_pixels(scene, (image["width"], image["height"]))
    rng = random.Random(7)
    for _ in range(80):  # more scenes at the smallest and most extreme sizes
        scene = demo.make_scene(rng)
        _check_pixels(scene, rng.choice([(96, 96), (96, 576), (768, 128), (97, 131)]))


# --- text -------------------------------------------------------------------------------------


def test_captions_are_the_caption_of_their_scene(dataset):
    _, rows = dataset
    for row in _of_kind(rows, "caption"):
        (scene,) = _scenes(row)
        (caption,) = row["captions"]
        assert caption["text"] == demo.caption_for(scene)
        provenance = caption["provenance"]
        assert provenance.pop("origin") == "original"
        assert set(provenance.values()) == {None}


def test_conversations_have_one_placeholder_per_image_and_alternate(dataset):
    _, rows = dataset
    conversations = _of_kind(rows, "conversation")
    for row in conversations:
        turns = row["conversation"]
        roles = [t["role"] for t in turns]
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["user", "assistant"] * (len(body) // 2) and body, roles
        placeholders = [t["content"].count(IMAGE_PLACEHOLDER) for t in turns]
        assert sum(placeholders) == len(row["images"]) >= 1
        assert all(n == 0 for t, n in zip(turns, placeholders, strict=True) if t["role"] != "user")
        assert placeholders[roles.index("user")] >= 1  # the first question shows an image
    image_counts = {len(r["images"]) for r in conversations}
    assert image_counts == {1, 2}
    assert any(r["conversation"][0]["role"] == "system" for r in conversations)
    assert any(len(r["conversation"]) >= 6 for r in conversations)  # multi-turn


_COMPARISONS = (
    "Do the two images have the same background colour?",
    "Which image has more shapes?",
)


def _target(question: str, last_shown: int) -> tuple[int, str]:
    """(index of the image a chat question is about, the question as qa_for words it)."""
    question = question.replace(IMAGE_PLACEHOLDER, "").strip()
    if m := re.fullmatch(r"Describe the (first|second) image\.", question):
        return demo.ORDINALS.index(m.group(1)), demo.DESCRIBE_QUESTION
    if m := re.fullmatch(r"In the (first|second) image, (.+)", question):
        rest = m.group(2)
        return demo.ORDINALS.index(m.group(1)), rest[0].upper() + rest[1:]
    return last_shown, question.removeprefix("Here is another image. ")


def test_every_answer_is_exact(dataset):
    """Each answer is qa_for's answer for the image the question is about (or a comparison)."""
    _, rows = dataset
    checked = 0
    for row in _of_kind(rows, "conversation"):
        scenes = _scenes(row)
        truths = [dict(demo.qa_for(scene, random.Random(0))) for scene in scenes]
        turns = [t for t in row["conversation"] if t["role"] != "system"]
        shown = -1
        for question, answer in zip(turns[::2], turns[1::2], strict=True):
            shown += question["content"].count(IMAGE_PLACEHOLDER)
            index, text = _target(question["content"], shown)
            if text in _COMPARISONS:
                continue
            expected = truths[index].get(text)
            if expected is None:  # the absent-pair count question differs per rng
                assert text.startswith("How many ") and answer["content"].startswith(
                    "There are no "
                )
            else:
                assert answer["content"] == expected, (row["sample_id"], text)
            checked += 1
    assert checked > 100


def test_comparison_answers(dataset):
    """Questions about both images come only in two-image chats and compare the right things."""
    _, rows = dataset
    seen = 0
    for row in _of_kind(rows, "conversation"):
        for question, answer in itertools.pairwise(t["content"] for t in row["conversation"]):
            if question not in _COMPARISONS:
                continue
            a, b = _scenes(row)
            if question == _COMPARISONS[0]:
                assert answer.startswith("Yes" if a.background == b.background else "No")
                assert b.background in answer
            else:
                n_a, n_b = a.num_shapes, b.num_shapes
                lead = "Neither" if n_a == n_b else ("The first" if n_a > n_b else "The second")
                assert answer.startswith(lead)
            seen += 1
    assert seen > 0


_COUNT_Q = re.compile(r"How many (\w+) (\w+) are there\?")
_SHAPE_OF_PLURAL = {plural: shape for shape, plural in demo.PLURALS.items()}


def _expected_answer(scene: demo.Scene, question: str) -> str | None:
    """An independent reading of the scene for count, total, background and word questions."""
    if m := _COUNT_Q.fullmatch(question):
        colour, plural = m.groups()
        shape = _SHAPE_OF_PLURAL[plural]
        n = sum(g.count for g in scene.groups if (g.shape, g.colour) == (shape, colour))
        if n == 0:
            return f"There are no {colour} {plural}."
        if n == 1:
            return f"There is one {colour} {shape}."
        return f"There are {demo.NUMBER_WORDS[n]} {colour} {plural}."
    if question == "How many shapes are there?":
        n = scene.num_shapes
        return "There is one shape." if n == 1 else f"There are {demo.NUMBER_WORDS[n]} shapes."
    if question == "What colour is the background?":
        return f"The background is {scene.background}."
    if question == "What word is written?":
        return f"The word is '{scene.word}'."
    return None


def test_qa_answers_agree_with_an_independent_reading():
    rng = random.Random(3)
    checked = 0
    for _ in range(300):
        scene = demo.make_scene(rng)
        qas = demo.qa_for(scene, rng)
        questions = [q for q, _ in qas]
        assert len(questions) == len(set(questions))  # no question with two answers
        assert (demo.DESCRIBE_QUESTION, demo.caption_for(scene)) in qas
        for question, answer in qas:
            expected = _expected_answer(scene, question)
            if expected is not None:
                assert answer == expected, question
                checked += 1
            if m := re.fullmatch(r"What colour (?:is|are) the (\w+)\?", question):
                noun = m.group(1)
                if noun not in ("background", "word"):
                    shape = _SHAPE_OF_PLURAL.get(noun, noun)
                    (group,) = [g for g in scene.groups if g.shape == shape]  # unique shape
                    assert (
                        answer
                        == f"The {noun} {'is' if group.count == 1 else 'are'} {group.colour}."
                    )
    assert checked > 600


def test_text_documents_are_text_only_and_true():
    for row_index in range(40):
        row = demo.text_row(0, row_index)
        assert row["text_only"] and row["images"] == [] and IMAGE_PLACEHOLDER not in row["text"]
        paragraphs = row["text"].split("\n\n")
        assert 2 <= len(paragraphs) <= 5
        for a, op, b, c in re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", row["text"]):
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        for scene in _scenes(row, "described_scenes"):
            assert demo.caption_for(scene) in row["text"]


# --- scenes -----------------------------------------------------------------------------------


def test_scene_invariants_and_meta_round_trip():
    rng = random.Random(5)
    for _ in range(500):
        scene = demo.make_scene(rng)
        assert demo.Scene.from_meta(json.loads(json.dumps(scene.to_meta()))) == scene
        colours = [g.colour for g in scene.groups] + [scene.word_colour] * (scene.word is not None)
        assert all(c in demo.FOREGROUNDS[scene.background] for c in colours)
        positions = [demo.POSITIONS.index(g.position) for g in scene.groups]
        assert positions == sorted(set(positions))  # one group per cell, in reading order
        pairs = [(g.shape, g.colour) for g in scene.groups]
        assert len(pairs) == len(set(pairs))
        assert len(scene.groups) <= demo.MAX_GROUPS


def test_held_out_scenes_are_new_distinct_and_deterministic(dataset):
    _, rows = dataset
    scenes = [
        s for row in rows for key in ("scenes", "described_scenes") for s in _scenes(row, key)
    ]
    shown = {demo.caption_for(s) for s in scenes}
    assert len(shown) > 100
    held = demo.held_out_scenes(0, 200, **COUNTS)
    captions = [demo.caption_for(s) for s in held]
    assert len(held) == 200 and len(set(captions)) == 200
    assert shown.isdisjoint(captions)
    assert held == demo.held_out_scenes(0, 200, **COUNTS)
    assert held != demo.held_out_scenes(1, 200, **COUNTS)


def test_held_out_scenes_skip_training_scenes_in_a_crowded_space():
    """With 10,000 training scenes, many held-out draws collide: all must be skipped."""
    training = {demo.caption_for(s) for s in demo.training_scenes(0, 10_000, 0, 0)}
    held = demo.held_out_scenes(0, 500, captions=10_000, conversations=0, texts=0)
    assert training.isdisjoint(demo.caption_for(s) for s in held)
