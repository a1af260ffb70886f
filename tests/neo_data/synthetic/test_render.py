"""Rendering: every stored image decodes to its stated size and format and shows exactly the scene
in its row's meta, where the caption says, in the colour it says, in ``count`` blobs."""

from __future__ import annotations

import hashlib
import io
import json
import random

import numpy as np
from PIL import Image

from neo_data.synthetic.render import EXTENSIONS, MAX_SIDE, MIN_SIDE, render_scene
from neo_data.synthetic.scenes import PALETTE, POSITIONS, WORD_POSITIONS, Scene, make_scene
from tests.neo_data.synthetic.demo_data import scenes_of

PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def test_images_decode_to_their_stated_size_format_and_hash(dataset):
    _, rows = dataset
    formats, aspects = set(), []
    for row in rows:
        image_meta = json.loads(row["meta"]).get("images", [])
        assert len(scenes_of(row)) == len(image_meta)
        assert len(image_meta) == len(row["images"])
        for image, meta in zip(row["images"], image_meta, strict=True):
            assert hashlib.sha256(image["bytes"]).hexdigest() == image["sha256"]
            with Image.open(io.BytesIO(image["bytes"])) as im:
                assert (
                    im.size == (image["width"], image["height"]) == (meta["width"], meta["height"])
                )
                assert im.format == PIL_FORMATS[meta["format"]]
                formats.add(im.format)
            assert min(im.size) >= MIN_SIDE and max(im.size) <= MAX_SIDE
            aspects.append(max(im.size) / min(im.size))
        if row["kind"] == "caption":
            assert (
                row["url"]
                == f"demo://captions/{row['row']:06d}.{EXTENSIONS[image_meta[0]['format']]}"
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
            row["images"], scenes_of(row), meta.get("images", []), strict=True
        ):
            size = (image["width"], image["height"])
            reference = _rgb(render_scene(scene, size, "png"))
            stored = _rgb(image["bytes"])
            if im_meta["format"] == "png":
                assert np.array_equal(stored, reference)
            else:
                assert np.abs(stored - reference).mean() < 6.0, row["sample_id"]


def _check_pixels(scene: Scene, size: tuple[int, int]) -> None:
    """Every drawn pixel is where the caption says, in the colour it says, in ``count`` blobs."""
    from scipy import ndimage

    arr = _rgb(render_scene(scene, size, "png"))
    height, width = arr.shape[:2]
    ink = (arr != PALETTE[scene.background]).any(-1)
    if scene.word is not None:
        row = WORD_POSITIONS.index(scene.word_position)
        ys, xs = np.nonzero(ink)
        assert row * height // 3 <= ys.min() and ys.max() < (row + 1) * height // 3
        assert width / 3 - 2 <= (xs.min() + xs.max()) / 2 <= 2 * width / 3 + 2  # middle column
        return
    explained = np.zeros_like(ink)
    for g in scene.groups:
        r, c = divmod(POSITIONS.index(g.position), 3)
        cell = (
            slice(r * height // 3, (r + 1) * height // 3),
            slice(c * width // 3, (c + 1) * width // 3),
        )
        mine = (arr[cell] == PALETTE[g.colour]).all(-1)
        assert np.array_equal(mine, ink[cell]), g  # no other colour drawn in this cell
        assert ndimage.label(mine, structure=np.ones((3, 3)))[1] == g.count, g
        explained[cell] = mine
    assert np.array_equal(explained, ink)  # nothing drawn outside the groups' cells


def test_rendered_pixels_match_the_caption(dataset):
    _, rows = dataset
    for row in rows:
        for scene, image in zip(scenes_of(row), row["images"], strict=True):
            _check_pixels(scene, (image["width"], image["height"]))
    rng = random.Random(7)
    for _ in range(80):  # more scenes at the smallest and most extreme sizes
        scene = make_scene(rng)
        _check_pixels(scene, rng.choice([(96, 96), (96, 576), (768, 128), (97, 131)]))
