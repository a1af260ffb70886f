"""A deterministic demo dataset in the curated schema: synthetic images with exact captions.

The project's one-command demo, the tests and the "does the model learn" benchmark need data that
is small, needs no network, and whose text is exactly predictable from the pixels. Every image is
drawn with Pillow from a :class:`Scene` (coloured shapes in the cells of a 3x3 grid, or a rendered
word) and every caption and answer is generated from that scene, so a model that reads the image
perfectly can reproduce the text word for word. The structured scene is kept in each row's
``meta`` JSON (``Scene.to_meta``) so an evaluation can check answers by exact match.

Three sources, each its own Parquet files in :data:`~neo_data.format.schema.CURATED_SCHEMA`::

    captions-00000.parquet       kind "caption", one image, one caption (provenance "original")
    conversations-00000.parquet  kind "conversation", one or two images, Q&A turns
    text-00000.parquet           kind "text", text_only, short synthetic paragraphs

Column rule: ``images`` is always a list (empty for text); the column of the row's own kind
(``captions``, ``conversation`` or ``text``) is set and the other two are null.

Determinism: row ``r`` of a source is drawn from its own RNG seeded by ``(seed, source, r)``, so
the same seed gives the same rows and bytes, and a larger dataset starts with the smaller one.
:func:`held_out_scenes` draws from a separate stream and skips any scene that the training set
of the same seed shows or describes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from neo_data.encoding.images import ImageEncoding, encode_image
from neo_data.format.schema import CURATED_SCHEMA, IMAGE_PLACEHOLDER

GENERATOR_VERSION = 1  # bump when the same seed would give different rows

ImageFormat = Literal["jpeg", "png", "webp"]
RGB = tuple[int, int, int]

PALETTE: dict[str, RGB] = {
    "red": (220, 20, 20),
    "green": (30, 160, 40),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (130, 40, 170),
    "pink": (245, 130, 190),
    "brown": (115, 70, 25),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "cyan": (30, 200, 220),
}
MIN_CONTRAST = 150.0  # RGB distance between a foreground and its background, so JPEG keeps both

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
PLURALS = {shape: shape + ("es" if shape.endswith("ss") else "s") for shape in SHAPES}

# Cells of a 3x3 grid in reading order; a scene uses each cell at most once, so "where" is exact.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
WORD_POSITIONS = ("top", "center", "bottom")  # a word spans the middle column of its row

WORDS = (
    "neo", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "book", "home", "data", "ray",
    "map", "sky", "box", "cup", "key", "boat", "rain", "snow", "lamp", "door", "hat", "pen",
)  # fmt: skip

MAX_COUNT = 4  # objects per group
MAX_GROUPS = 3  # groups per scene
WORD_SCENE_FRACTION = 0.3

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)  # fmt: skip

FORMATS: tuple[ImageFormat, ...] = ("jpeg", "png", "webp")
FORMAT_WEIGHTS = (0.45, 0.35, 0.2)
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
ENCODING_QUALITY = 90
# Short side at least 96 px, so a cell holding four objects still draws each at 8 px or more.
MIN_SIDE, MAX_SIDE = 96, 768
SLOT_MARGIN = 1.5  # px between an object and its slot's edge
MIN_FONT_SIZE = 8

DEFAULT_CAPTIONS, DEFAULT_CONVERSATIONS, DEFAULT_TEXTS = 400, 200, 300
CAPTION_SOURCE = "demo-captions"
CONVERSATION_SOURCE = "demo-conversations"
TEXT_SOURCE = "demo-text"

DESCRIBE_QUESTION = "Describe the image."
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a careful assistant that answers questions about images exactly.",
    "Answer questions about the pictures the user shows you in one short sentence.",
)


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def _require(field: str, value: object, valid: Iterable[object]) -> None:
    """Raise a ValueError naming the field, the bad value and the valid ones."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"{field}: {value!r} is not one of {valid}")


@dataclass(frozen=True)
class ShapeGroup:
    """``count`` identical shapes of one colour inside one cell of the 3x3 grid."""

    shape: str
    colour: str
    count: int
    position: str

    def __post_init__(self) -> None:
        _require("ShapeGroup.shape", self.shape, SHAPES)
        _require("ShapeGroup.colour", self.colour, PALETTE)
        _require("ShapeGroup.count", self.count, range(1, MAX_COUNT + 1))
        _require("ShapeGroup.position", self.position, POSITIONS)


@dataclass(frozen=True)
class Scene:
    """What an image shows; the caption and every answer are derived from it alone.

    A scene is either shapes (``groups``, at most one per grid cell, sorted in reading order,
    each (shape, colour) pair at most once) or a word (``word`` drawn in ``word_colour`` in the
    ``word_position`` row). ``layout_seed`` fixes the pixel-level jitter (sizes and offsets
    inside a cell) that no caption mentions, so rendering is a pure function of the scene.
    """

    background: str
    groups: tuple[ShapeGroup, ...] = ()
    word: str | None = None
    word_colour: str | None = None
    word_position: str | None = None
    layout_seed: int = 0

    def __post_init__(self) -> None:
        _require("Scene.background", self.background, PALETTE)
        if self.word is None:
            if not self.groups or self.word_colour is not None or self.word_position is not None:
                raise ValueError("Scene: a shapes scene needs groups and no word_* fields")
            return
        if self.groups:
            raise ValueError("Scene: a word scene has no shape groups")
        _require("Scene.word_colour", self.word_colour, PALETTE)
        _require("Scene.word_position", self.word_position, WORD_POSITIONS)

    @property
    def kind(self) -> Literal["shapes", "word"]:
        return "word" if self.word is not None else "shapes"

    @property
    def num_shapes(self) -> int:
        return sum(g.count for g in self.groups)

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready form, stored in ``meta`` so evaluations can check exact answers."""
        return {
            "kind": self.kind,
            "background": self.background,
            "groups": [vars(g).copy() for g in self.groups],
            "word": self.word,
            "word_colour": self.word_colour,
            "word_position": self.word_position,
            "layout_seed": self.layout_seed,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Scene:
        return cls(
            background=meta["background"],
            groups=tuple(ShapeGroup(**g) for g in meta["groups"]),
            word=meta["word"],
            word_colour=meta["word_colour"],
            word_position=meta["word_position"],
            layout_seed=meta["layout_seed"],
        )


def _contrasts(a: str, b: str) -> bool:
    return math.dist(PALETTE[a], PALETTE[b]) >= MIN_CONTRAST


# Colours that may be drawn on each background.
FOREGROUNDS: dict[str, tuple[str, ...]] = {
    bg: tuple(c for c in PALETTE if c != bg and _contrasts(c, bg)) for bg in PALETTE
}


def make_scene(
    rng: random.Random,
    *,
    max_groups: int = MAX_GROUPS,
    word_fraction: float = WORD_SCENE_FRACTION,
) -> Scene:
    """Draw a random scene: a word (``word_fraction``, 30%) or 1..``max_groups`` (3) groups of
    1..4 shapes on a plain background. The defaults are the demo dataset's distribution; fewer
    groups and no words make an easier one (``benchmarks/bench_learning.py``)."""
    if not 1 <= max_groups <= len(POSITIONS) or not 0.0 <= word_fraction <= 1.0:
        raise ValueError(
            f"make_scene: max_groups={max_groups} (1..{len(POSITIONS)}), "
            f"word_fraction={word_fraction} (0..1)"
        )
    background = rng.choice(list(PALETTE))
    if rng.random() < word_fraction:
        return Scene(
            background=background,
            word=rng.choice(WORDS),
            word_colour=rng.choice(FOREGROUNDS[background]),
            word_position=rng.choice(WORD_POSITIONS),
            layout_seed=rng.getrandbits(32),
        )
    positions = sorted(rng.sample(POSITIONS, rng.randint(1, max_groups)), key=POSITIONS.index)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < len(positions):
        pair = (rng.choice(SHAPES), rng.choice(FOREGROUNDS[background]))
        if pair not in pairs:
            pairs.append(pair)
    groups = tuple(
        ShapeGroup(shape, colour, rng.randint(1, MAX_COUNT), position)
        for (shape, colour), position in zip(pairs, positions, strict=True)
    )
    return Scene(background=background, groups=groups, layout_seed=rng.getrandbits(32))


# ---------------------------------------------------------------------------------------------
# Text from scenes
# ---------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else PLURALS[shape]


def _quantity(group: ShapeGroup) -> str:
    """``"a red circle"``, ``"an orange star"``, ``"three blue squares"``."""
    lead = _article(group.colour) if group.count == 1 else _number(group.count)
    return f"{lead} {group.colour} {_noun(group.shape, group.count)}"


def _join(items: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def caption_for(scene: Scene) -> str:
    """The caption of a scene; it names everything drawn, in reading order, and nothing else.

    "Two red circles on the left and a blue square at the top, on a white background."
    "The word 'neo' written in green in the center, on a white background."
    """
    on_background = f"on {_article(scene.background)} {scene.background} background"
    if scene.word is not None:
        where = POSITION_PHRASES[scene.word_position]
        return f"The word '{scene.word}' written in {scene.word_colour} {where}, {on_background}."
    parts = [f"{_quantity(g)} {POSITION_PHRASES[g.position]}" for g in scene.groups]
    return _sentence(f"{_join(parts)}, {on_background}.")


def _count_qa(shape: str, colour: str, count: int) -> tuple[str, str]:
    if count == 0:
        answer = f"There are no {colour} {PLURALS[shape]}."
    elif count == 1:
        answer = f"There is one {colour} {shape}."
    else:
        answer = f"There are {_number(count)} {colour} {PLURALS[shape]}."
    return f"How many {colour} {PLURALS[shape]} are there?", answer


def _group_qas(scene: Scene, group: ShapeGroup) -> list[tuple[str, str]]:
    """Count, position, "what is there" and (when the shape is unique) colour of one group."""
    noun = _noun(group.shape, group.count)
    be = "is" if group.count == 1 else "are"
    where = POSITION_PHRASES[group.position]
    qas = [
        _count_qa(group.shape, group.colour, group.count),
        (f"Where {be} the {group.colour} {noun}?", f"The {group.colour} {noun} {be} {where}."),
        (f"What is {where}?", _sentence(_quantity(group)) + "."),
    ]
    if sum(g.shape == group.shape for g in scene.groups) == 1:
        qas.append((f"What colour {be} the {noun}?", f"The {noun} {be} {group.colour}."))
    return qas


def _absent_qa(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A count question whose answer is "no ...": a (shape, colour) pair the scene lacks."""
    present = {(g.shape, g.colour) for g in scene.groups}
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(list(PALETTE))
        if (shape, colour) not in present:
            return _count_qa(shape, colour, 0)


def qa_for(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Every question the scene answers exactly, with its answer, in a random order.

    Shapes: per group how many / where / what is at a cell / what colour (when the shape is
    unique); one absent pair ("There are no ..."); the total count. Words: what word, what
    colour, where. Both: the background colour and "Describe the image." (answer: the caption).
    ``rng`` picks the absent pair and the order; callers take a prefix for shorter chats.
    """
    qas = [
        ("What colour is the background?", f"The background is {scene.background}."),
        (DESCRIBE_QUESTION, caption_for(scene)),
    ]
    if scene.word is not None:
        qas += [
            ("What word is written?", f"The word is '{scene.word}'."),
            ("What colour is the word?", f"The word is {scene.word_colour}."),
            ("Where is the word?", f"The word is {POSITION_PHRASES[scene.word_position]}."),
        ]
    else:
        for group in scene.groups:
            qas += _group_qas(scene, group)
        qas.append(_absent_qa(scene, rng))
        n = scene.num_shapes
        total = "There is one shape." if n == 1 else f"There are {_number(n)} shapes."
        qas.append(("How many shapes are there?", total))
    rng.shuffle(qas)
    return qas


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

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


def render_scene(scene: Scene, size: tuple[int, int], fmt: ImageFormat = "png") -> bytes:
    """Draw ``scene`` on a ``size = (width, height)`` canvas and encode it as ``fmt``.

    Pure: the same scene, size and format always give the same bytes (jitter comes from
    ``scene.layout_seed``). Encoding goes through :func:`neo_data.encoding.images.encode_image`.
    """
    image = Image.new("RGB", size, PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    rng = random.Random(scene.layout_seed)
    if scene.word is not None:
        _draw_word(draw, scene.word, scene.word_colour, scene.word_position, size, rng)
    for group in scene.groups:
        _draw_group(draw, group, size, rng)
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


# ---------------------------------------------------------------------------------------------
# Text documents
# ---------------------------------------------------------------------------------------------

SHAPE_FACTS = {
    "circle": "A circle is round and has no corners.",
    "square": "A square has four equal sides and four corners.",
    "triangle": "A triangle has three sides and three corners.",
    "star": "The stars in these pictures have five points.",
    "diamond": "A diamond has four sides and stands on one of its corners.",
    "hexagon": "A hexagon has six sides and six corners.",
    "cross": "A cross is made of two bars that meet in the middle.",
}
COLOUR_FACTS = (
    "Mixing blue and yellow makes green.",
    "Mixing red and yellow makes orange.",
    "Mixing red and blue makes purple.",
    "Mixing red and white makes pink.",
    "Mixing black and white makes gray.",
    "The colours of the rainbow are red, orange, yellow, green, blue, indigo and violet.",
    "On a clear day the sky is blue.",
    "Fresh grass is green.",
    "Snow is white.",
    "A ripe banana is yellow.",
    "Text is easiest to read when its colour is very different from the background.",
)
NAMES = ("Ada", "Ben", "Mia", "Sam", "Lea", "Tom", "Noor", "Ravi", "Yuki", "Omar")
ITEMS = (("apple", "apples"), ("ball", "balls"), ("book", "books"), ("cup", "cups"),
         ("box", "boxes"), ("pencil", "pencils"), ("shell", "shells"), ("coin", "coins"))  # fmt: skip


def _amount(rng: random.Random, n: int, item: tuple[str, str]) -> str:
    """``"3 apples"`` or ``"three apples"`` (digits or words, at random)."""
    number = str(n) if rng.random() < 0.5 else _number(n)
    return f"{number} {item[0] if n == 1 else item[1]}"


def _shape_paragraph(rng: random.Random) -> str:
    return " ".join(SHAPE_FACTS[s] for s in rng.sample(SHAPES, rng.randint(2, 4)))


def _colour_paragraph(rng: random.Random) -> str:
    return " ".join(rng.sample(COLOUR_FACTS, rng.randint(2, 4)))


def _arithmetic_paragraph(rng: random.Random) -> str:
    """A one-step addition or subtraction story with its equation; always arithmetically right."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(1, 12)
    if rng.random() < 0.5:
        b = rng.randint(1, 8)
        story = f"{name} has {_amount(rng, a, item)}. {name} finds {_amount(rng, b, item)} more."
        result, equation = a + b, f"{a} + {b} = {a + b}"
    else:
        b = rng.randint(1, a)
        story = f"{name} has {_amount(rng, a, item)}. {name} gives {_amount(rng, b, item)} away."
        result, equation = a - b, f"{a} - {b} = {a - b}"
    return f"{story} Now {name} has {_amount(rng, result, item)}, because {equation}."


def _counting_paragraph(rng: random.Random) -> str:
    start = rng.randint(0, 12)
    stop = rng.randint(start + 2, min(start + 8, len(NUMBER_WORDS) - 1))
    words = ", ".join(NUMBER_WORDS[start : stop + 1])
    return f"Counting from {start} to {stop}: {words}. The number after {stop - 1} is {stop}."


def _text_document(rng: random.Random) -> tuple[str, list[str], list[Scene]]:
    """2..5 paragraphs on random topics; returns (text, topics, scenes described in the text)."""
    generators: dict[str, Callable[[random.Random], str]] = {
        "shapes": _shape_paragraph,
        "colours": _colour_paragraph,
        "arithmetic": _arithmetic_paragraph,
        "counting": _counting_paragraph,
    }
    paragraphs, topics, scenes = [], [], []
    for _ in range(rng.randint(2, 5)):
        topic = rng.choice([*generators, "scene"])
        if topic == "scene":
            scene = make_scene(rng)
            scenes.append(scene)
            paragraphs.append(f"A picture shows the following. {caption_for(scene)}")
        else:
            paragraphs.append(generators[topic](rng))
        topics.append(topic)
    return "\n\n".join(paragraphs), topics, scenes


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------

ORDINALS = ("first", "second")


def _about(index: int, question: str) -> str:
    """Point a single-image question at one image of a two-image chat."""
    if question == DESCRIBE_QUESTION:
        return f"Describe the {ORDINALS[index]} image."
    return f"In the {ORDINALS[index]} image, {question[0].lower()}{question[1:]}"


def _compare_qa(scenes: list[Scene], rng: random.Random) -> tuple[str, str]:
    """A question that needs both images: same background, or which has more shapes."""
    a, b = scenes
    if rng.random() < 0.5:
        question = "Do the two images have the same background colour?"
        if a.background == b.background:
            return question, f"Yes, both backgrounds are {a.background}."
        return (
            question,
            f"No, the first background is {a.background} and the second is {b.background}.",
        )
    question = "Which image has more shapes?"
    if a.num_shapes == b.num_shapes:
        return question, f"Neither, both have {_number(a.num_shapes)}."
    more = 0 if a.num_shapes > b.num_shapes else 1
    counts = f"{_number(a.num_shapes)} against {_number(b.num_shapes)}"
    return question, f"The {ORDINALS[more]} image, {counts}."


def _turns(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    turns = []
    for question, answer in pairs:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def _show_image(content: str, rng: random.Random) -> str:
    """Put an image placeholder before a question, or (one time in five) after it."""
    if rng.random() < 0.8:
        return f"{IMAGE_PLACEHOLDER}\n{content}"
    return f"{content}\n{IMAGE_PLACEHOLDER}"


def _one_image_chat(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """1..4 Q&A turns about one image, shown in the first question."""
    turns = _turns(qa_for(scene, rng)[: rng.randint(1, 4)])
    turns[0]["content"] = _show_image(turns[0]["content"], rng)
    return turns


def _two_image_chat(scenes: list[Scene], rng: random.Random) -> list[dict[str, str]]:
    """Both images in the first question and questions that name the image, or the second
    image shown mid-chat; half the time a last question compares the two."""
    qas = [qa_for(s, rng) for s in scenes]
    if rng.random() < 0.5:
        picks = [rng.randrange(2) for _ in range(rng.randint(1, 3))]
        pairs = []
        for i in picks:
            question, answer = qas[i].pop()
            pairs.append((_about(i, question), answer))
        turns = _turns(pairs)
        turns[0]["content"] = f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\n{turns[0]['content']}"
    else:
        turns = _turns(qas[0][: rng.randint(1, 2)])
        turns[0]["content"] = _show_image(turns[0]["content"], rng)
        question, answer = qas[1][0]
        turns += _turns([(f"Here is another image. {question}", answer)])
        turns[-2]["content"] = f"{IMAGE_PLACEHOLDER}\n{turns[-2]['content']}"
    if rng.random() < 0.5:
        turns += _turns([_compare_qa(scenes, rng)])
    return turns


def _conversation_scenes(rng: random.Random) -> list[Scene]:
    """One scene, or two (one chat in five): the first draws of a conversation row's RNG."""
    return [make_scene(rng) for _ in range(2 if rng.random() < 0.2 else 1)]


# ---------------------------------------------------------------------------------------------
# Rows and files
# ---------------------------------------------------------------------------------------------

ORIGINAL_PROVENANCE = {
    "origin": "original",
    "backend": None,
    "model": None,
    "prompt_template": None,
    "prompt_sha256": None,
    "generation": None,
    "created_at": None,
}


def _rng(seed: int, stream: str, row: int) -> random.Random:
    """The RNG of one row of one stream (string seeds are hashed with SHA-512: stable)."""
    return random.Random(f"neo-demo/v{GENERATOR_VERSION}/{seed}/{stream}/{row}")


def _image_entry(data: bytes, size: tuple[int, int]) -> dict[str, Any]:
    return {
        "bytes": data,
        "width": size[0],
        "height": size[1],
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _render_images(
    scenes: list[Scene], rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render each scene at a random size and format: (image entries, meta per image)."""
    entries, metas = [], []
    for scene in scenes:
        size, fmt = sample_image_size(rng), sample_format(rng)
        entries.append(_image_entry(render_scene(scene, size, fmt), size))
        metas.append({"format": fmt, "width": size[0], "height": size[1]})
    return entries, metas


def _row(
    kind: str, source: str, seed: int, row: int, *, url: str, meta: dict[str, Any], **columns: Any
) -> dict[str, Any]:
    """A curated row: lineage, ``meta`` JSON, and the kind's own columns (the rest null)."""
    base = {
        "sample_id": f"{source}-{seed}-{row:06d}",
        "kind": kind,
        "text_only": kind == "text",
        "images": [],
        "captions": None,
        "conversation": None,
        "text": None,
        "source": source,
        "url": url,
        "row": row,
        "meta": json.dumps(
            {"generator": f"neo_data.synthetic.scenes/v{GENERATOR_VERSION}", "seed": seed, **meta},
            sort_keys=True,
        ),
    }
    return base | columns


def caption_row(seed: int, row: int) -> dict[str, Any]:
    """Row ``row`` of ``demo-captions``: one image and its exact caption."""
    rng = _rng(seed, "captions", row)
    scene = make_scene(rng)  # first draw: held_out_scenes regenerates it without rendering
    images, image_meta = _render_images([scene], rng)
    url = f"demo://captions/{row:06d}.{EXTENSIONS[image_meta[0]['format']]}"
    caption = {"text": caption_for(scene), "provenance": ORIGINAL_PROVENANCE}
    meta = {"scenes": [scene.to_meta()], "images": image_meta}
    return _row(
        "caption", CAPTION_SOURCE, seed, row, url=url, meta=meta, images=images, captions=[caption]
    )


def conversation_row(seed: int, row: int) -> dict[str, Any]:
    """Row ``row`` of ``demo-conversations``: Q&A about one or two images, some with a system turn."""
    rng = _rng(seed, "conversations", row)
    scenes = _conversation_scenes(rng)
    images, image_meta = _render_images(scenes, rng)
    system = (
        [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.15 else []
    )
    chat = _one_image_chat(scenes[0], rng) if len(scenes) == 1 else _two_image_chat(scenes, rng)
    meta = {"scenes": [s.to_meta() for s in scenes], "images": image_meta}
    url = f"demo://conversations/{row:06d}"
    columns = {"images": images, "conversation": system + chat}
    return _row("conversation", CONVERSATION_SOURCE, seed, row, url=url, meta=meta, **columns)


def text_row(seed: int, row: int) -> dict[str, Any]:
    """Row ``row`` of ``demo-text``: a short synthetic document, every token supervised."""
    text, topics, scenes = _text_document(_rng(seed, "text", row))
    meta = {"topics": topics, "described_scenes": [s.to_meta() for s in scenes]}
    url = f"demo://text/{row:06d}.txt"
    return _row("text", TEXT_SOURCE, seed, row, url=url, meta=meta, text=text)


# File stem -> row builder, in writing order; the stem is the source name without "demo-".
ROW_BUILDERS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "captions": caption_row,
    "conversations": conversation_row,
    "text": text_row,
}


def _write_rows(fs: fsspec.AbstractFileSystem, path: str, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=CURATED_SCHEMA)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def write_demo_dataset(
    out_dir: str,
    *,
    captions: int = DEFAULT_CAPTIONS,
    conversations: int = DEFAULT_CONVERSATIONS,
    texts: int = DEFAULT_TEXTS,
    seed: int = 0,
    rows_per_file: int = 256,
) -> list[str]:
    """Write the demo dataset as curated Parquet files under ``out_dir`` (local or ``s3://``).

    Files are ``<stem>-<NNNNN>.parquet`` for stems ``captions``, ``conversations`` and ``text``
    with at most ``rows_per_file`` rows each; a count of 0 writes no file for that kind.
    Returns the written paths, spelled like ``out_dir``, in writing order.
    """
    limits = {"captions": 0, "conversations": 0, "texts": 0, "rows_per_file": 1}
    values = [captions, conversations, texts, rows_per_file]
    for (name, least), value in zip(limits.items(), values, strict=True):
        if value < least:
            raise ValueError(f"write_demo_dataset: {name}={value}, must be at least {least}")
    counts = dict(zip(ROW_BUILDERS, (captions, conversations, texts), strict=True))
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    paths = []
    for stem, count in counts.items():
        for file_index, start in enumerate(range(0, count, rows_per_file)):
            stop = min(count, start + rows_per_file)
            rows = [ROW_BUILDERS[stem](seed, r) for r in range(start, stop)]
            name = f"{stem}-{file_index:05d}.parquet"
            _write_rows(fs, f"{root.rstrip('/')}/{name}", rows)
            paths.append(f"{out_dir.rstrip('/')}/{name}")
    return paths


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def training_scenes(
    seed: int,
    captions: int = DEFAULT_CAPTIONS,
    conversations: int = DEFAULT_CONVERSATIONS,
    texts: int = DEFAULT_TEXTS,
) -> list[Scene]:
    """Every scene the dataset of these arguments shows or describes, without rendering any."""
    scenes = [make_scene(_rng(seed, "captions", r)) for r in range(captions)]
    for r in range(conversations):
        scenes += _conversation_scenes(_rng(seed, "conversations", r))
    for r in range(texts):
        scenes += _text_document(_rng(seed, "text", r))[2]
    return scenes


def held_out_scenes(
    seed: int,
    n: int,
    *,
    captions: int = DEFAULT_CAPTIONS,
    conversations: int = DEFAULT_CONVERSATIONS,
    texts: int = DEFAULT_TEXTS,
) -> list[Scene]:
    """``n`` distinct scenes that the training set of ``seed`` (and these counts) never has.

    Same generator, separate RNG stream; a scene is skipped when its caption (which names
    everything a scene shows) equals that of a training scene or an earlier held-out one.
    Render them with :func:`render_scene` and ask :func:`qa_for` to build an exact-match eval.
    """
    seen = {caption_for(s) for s in training_scenes(seed, captions, conversations, texts)}
    out: list[Scene] = []
    index = 0
    while len(out) < n:
        scene = make_scene(_rng(seed, "held-out", index))
        index += 1
        key = caption_for(scene)
        if key not in seen:
            seen.add(key)
            out.append(scene)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m neo_data.synthetic.scenes OUT_DIR [SEED]``: write the default demo dataset."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        raise SystemExit("usage: python -m neo_data.synthetic.scenes OUT_DIR [SEED]")
    paths = write_demo_dataset(args[0], seed=int(args[1]) if len(args) == 2 else 0)
    print("\n".join(paths))


if __name__ == "__main__":
    main()
