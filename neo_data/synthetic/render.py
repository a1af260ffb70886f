"""Drawing a :class:`~neo_data.synthetic.scenes.Scene`: Pillow on a plain background, exact cells.

Rendering is a pure function of the scene, the size and the format: the pixel-level jitter
(object sizes and offsets inside a cell, a word's font size) comes from ``scene.layout_seed``.
Objects keep clear of each other and of their cell's edges, so the pixels say exactly what the
caption says (a test counts the drawn blobs). The demo dataset draws each image at a random size
and format (:func:`sample_image_size`, :func:`sample_format`).
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from neo_data.encoding.images import ImageEncoding, encode_image
from neo_data.synthetic.scenes import PALETTE, POSITIONS, SHAPES, WORD_POSITIONS, Scene, ShapeGroup

ImageFormat = Literal["jpeg", "png", "webp"]

FORMATS: tuple[ImageFormat, ...] = ("jpeg", "png", "webp")
FORMAT_WEIGHTS = (0.45, 0.35, 0.2)
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
ENCODING_QUALITY = 90
# Short side at least 96 px, so a cell holding four objects still draws each at 8 px or more.
MIN_SIDE, MAX_SIDE = 96, 768
SLOT_MARGIN = 1.5  # px between an object and its slot's edge
MIN_FONT_SIZE = 8

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _cell_box(position: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box ``[x0, x1) x [y0, y1)`` of one cell of the 3x3 grid (whole pixels)."""
    width, height = size
    row, col = divmod(POSITIONS.index(position), 3)
    return (col * width // 3, row * height // 3, (col + 1) * width // 3, (row + 1) * height // 3)


def _word_box(position: str, size: tuple[int, int]) -> Box:
    """Pixel box where a word may go: the middle 80% of the width of its third of the height."""
    width, height = size
    row = WORD_POSITIONS.index(position)
    return (0.1 * width, row * height / 3, 0.9 * width, (row + 1) * height / 3)


def _slot_grid(count: int, cell_w: float, cell_h: float) -> tuple[int, int]:
    """(rows, cols) of slots for ``count`` objects in a cell that makes the slots largest."""
    options = [(math.ceil(count / cols), cols) for cols in range(1, count + 1)]
    return max(options, key=lambda rc: (min(cell_w / rc[1], cell_h / rc[0]), -rc[0] * rc[1]))


def _shape_points(shape: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    """Polygon of a shape centred at (cx, cy) inside an s x s square."""
    r = s / 2
    if shape == "square":
        r *= 0.9
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":  # narrower than tall, so it is never a rotated square
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "cross":  # a plus sign with arms a third of its size thick
        ticks = (-r, -r / 3, r / 3, r)
        corners = ((1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2),
                   (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1))  # fmt: skip
        return [(cx + ticks[i], cy + ticks[j]) for i, j in corners]
    if shape == "star":
        radii, n, start = (r, 0.45 * r), 10, -math.pi / 2
    elif shape == "hexagon":
        radii, n, start = (r, r), 6, 0.0
    else:
        raise ValueError(f"no polygon for shape {shape!r}; polygon shapes are {SHAPES[1:]}")
    angles = [start + 2 * math.pi * k / n for k in range(n)]
    return [
        (cx + radii[k % 2] * math.cos(a), cy + radii[k % 2] * math.sin(a))
        for k, a in enumerate(angles)
    ]


def _draw_group(
    draw: ImageDraw.ImageDraw, group: ShapeGroup, size: tuple[int, int], rng: random.Random
) -> None:
    """Draw a group's objects, one per slot of its cell.

    Each object keeps ``SLOT_MARGIN`` px from its slot's edges, so objects never touch each
    other or leave their cell: a connected-component count of the pixels equals ``count``.
    """
    x0, y0, x1, y1 = _cell_box(group.position, size)
    rows, cols = _slot_grid(group.count, x1 - x0, y1 - y0)
    slot_w, slot_h = (x1 - x0) / cols, (y1 - y0) / rows
    room_w, room_h = slot_w - 2 * SLOT_MARGIN, slot_h - 2 * SLOT_MARGIN
    fill = PALETTE[group.colour]
    for slot in rng.sample(range(rows * cols), group.count):
        row, col = divmod(slot, cols)
        s = min(room_w, room_h) * rng.uniform(0.65, 0.9)
        cx = x0 + col * slot_w + SLOT_MARGIN + s / 2 + rng.uniform(0, room_w - s)
        cy = y0 + row * slot_h + SLOT_MARGIN + s / 2 + rng.uniform(0, room_h - s)
        if group.shape == "circle":
            draw.ellipse((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=fill)
        else:
            draw.polygon(_shape_points(group.shape, cx, cy, s), fill=fill)


@lru_cache(maxsize=512)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _draw_word(
    draw: ImageDraw.ImageDraw,
    word: str,
    colour: str,
    position: str,
    size: tuple[int, int],
    rng: random.Random,
) -> None:
    """Draw ``word`` inside its row's box with its centre in the middle third of the width.

    The font is 60..100% of the largest size that fits 70% of the row height and the box width;
    keeping the centre in the middle column makes "at the top" mean what it means for shapes.
    """
    x0, y0, x1, y1 = _word_box(position, size)
    ref = 64
    left, top, right, bottom = draw.textbbox((0, 0), word, font=_font(ref), anchor="mm")
    fit = min((x1 - x0) / (right - left), 0.7 * (y1 - y0) / (bottom - top))
    font_size = max(MIN_FONT_SIZE, int(ref * fit * rng.uniform(0.6, 1.0)))
    while True:  # text size is not exactly linear in font size: shrink until it fits
        font = _font(font_size)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font, anchor="mm")
        if (right - left <= x1 - x0 and bottom - top <= y1 - y0) or font_size <= MIN_FONT_SIZE:
            break
        font_size -= 1
    lo, hi = max(x0 - left, size[0] / 3), min(x1 - right, 2 * size[0] / 3)
    cx = rng.uniform(lo, hi) if lo <= hi else size[0] / 2
    cy = rng.uniform(y0 - top, max(y0 - top, y1 - bottom))
    draw.text((cx, cy), word, font=font, fill=PALETTE[colour], anchor="mm")


def draw_scene(scene: Scene, size: tuple[int, int]) -> Image.Image:
    """``scene`` drawn on a ``size = (width, height)`` RGB canvas (what a lossless encoding of
    :func:`render_scene` decodes to)."""
    image = Image.new("RGB", size, PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    rng = random.Random(scene.layout_seed)
    if scene.word is not None:
        _draw_word(draw, scene.word, scene.word_colour, scene.word_position, size, rng)
    for group in scene.groups:
        _draw_group(draw, group, size, rng)
    return image


def render_scene(scene: Scene, size: tuple[int, int], fmt: ImageFormat = "png") -> bytes:
    """Draw ``scene`` on a ``size = (width, height)`` canvas and encode it as ``fmt``.

    Pure: the same scene, size and format always give the same bytes (jitter comes from
    ``scene.layout_seed``). Encoding goes through :func:`neo_data.encoding.images.encode_image`.
    """
    image = draw_scene(scene, size)
    return encode_image(image, ImageEncoding(format=fmt, quality=ENCODING_QUALITY))


def sample_image_size(rng: random.Random) -> tuple[int, int]:
    """(width, height), sides in 96..768: mostly aspect 1:2..2:1, one in eight 3:1..6:1."""
    if rng.random() < 0.125:
        aspect = rng.uniform(3.0, 6.0)
        long_side = rng.randint(6 * MIN_SIDE, MAX_SIDE)
    else:
        aspect = math.exp(rng.uniform(0.0, math.log(2.0)))
        long_side = round(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE))))
    short_side = max(MIN_SIDE, round(long_side / aspect))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def sample_format(rng: random.Random) -> ImageFormat:
    return rng.choices(FORMATS, weights=FORMAT_WEIGHTS)[0]
