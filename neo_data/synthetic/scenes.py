"""The scene model of the synthetic data: what an image shows, and how scenes are drawn at random.

The demo dataset, the tests and the "does the model learn" benchmark need data that is small,
needs no network, and whose text is exactly predictable from the pixels. Every image is drawn
from a :class:`Scene` (coloured shapes in the cells of a 3x3 grid, or a rendered word): the
picture (:mod:`neo_data.synthetic.render`), its caption and every answer about it
(:mod:`neo_data.synthetic.texts`) are functions of the scene alone, so a model that reads the
image perfectly can reproduce the text word for word. A scene round-trips through JSON
(``Scene.to_meta``), so an evaluation can check answers by exact match.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

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
WORD_POSITIONS = ("top", "center", "bottom")  # a word spans the middle column of its row

WORDS = (
    "neo", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "book", "home", "data", "ray",
    "map", "sky", "box", "cup", "key", "boat", "rain", "snow", "lamp", "door", "hat", "pen",
)  # fmt: skip

MAX_COUNT = 4  # objects per group
MAX_GROUPS = 3  # groups per scene
WORD_SCENE_FRACTION = 0.3


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
    groups and no words make an easier one (:mod:`neo_data.synthetic.learning`)."""
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
