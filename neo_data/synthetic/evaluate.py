"""Evaluation on synthetic scenes: scenes a training set never shows, and scoring a model's
captions against the truth, exactly and per attribute.

A caption names everything its scene shows (:func:`~neo_data.synthetic.texts.caption_for`), so
two scenes with the same caption look the same to a captioner: "held out" means a caption no
training scene has. A one-group caption ("Three red stars in the top left corner, on a white
background.") parses back into its five attributes (count, colour, shape, position,
background), so a near miss still says what the model reads right.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from neo_data.synthetic.scenes import (
    FOREGROUNDS,
    MAX_COUNT,
    PALETTE,
    PLURALS,
    POSITIONS,
    SHAPES,
    Scene,
)
from neo_data.synthetic.texts import NUMBER_WORDS, POSITION_PHRASES, caption_for

ATTRS = ("count", "colour", "shape", "position", "background")

CAPTION_RE = re.compile(
    r"^(?P<lead>\w+) (?P<colour>\w+) (?P<shape>\w+) (?P<where>.+), on an? (?P<bg>\w+) background\.$"
)
SINGULAR = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
PHRASE_POSITION = {v: k for k, v in POSITION_PHRASES.items()}


def unseen_scenes(seen: Iterable[Scene], draw: Callable[[int], Scene], n: int) -> list[Scene]:
    """The first ``n`` of ``draw(0), draw(1), ...`` whose caption neither a scene of ``seen``
    nor an earlier pick has: distinct scenes that a model trained on ``seen`` never saw."""
    captions = {caption_for(s) for s in seen}
    out: list[Scene] = []
    index = 0
    while len(out) < n:
        scene = draw(index)
        index += 1
        key = caption_for(scene)
        if key not in captions:
            captions.add(key)
            out.append(scene)
    return out


def attributes(caption: str) -> dict[str, Any] | None:
    """count, colour, shape, position, background of a one-group caption (None: unparsable)."""
    m = CAPTION_RE.match(caption.strip())
    if m is None:
        return None
    lead = m["lead"].lower()
    count = 1 if lead in ("a", "an") else (
        NUMBER_WORDS.index(lead) if lead in NUMBER_WORDS else None
    )  # fmt: skip
    return {
        "count": count,
        "colour": m["colour"],
        "shape": SINGULAR.get(m["shape"]),
        "position": PHRASE_POSITION.get(m["where"]),
        "background": m["bg"],
    }


def score(answers: list[str], truths: list[str], scenes: list[Scene]) -> dict[str, float]:
    """Exact match, and per-attribute accuracy over the one-group scenes (NaN: none)."""
    res = {"exact": float(np.mean([a.strip() == t for a, t in zip(answers, truths, strict=True)]))}
    one = [(a, s) for a, s in zip(answers, scenes, strict=True) if len(s.groups) == 1]
    for attr in ATTRS:
        hits = []
        for answer, scene in one:
            got, g = attributes(answer), scene.groups[0]
            truth = {"count": g.count, "colour": g.colour, "shape": g.shape,
                     "position": g.position, "background": scene.background}[attr]  # fmt: skip
            hits.append(got is not None and got[attr] == truth)
        res[attr] = float(np.mean(hits)) if hits else float("nan")
    return res


def chance(scenes: list[Scene]) -> dict[str, float]:
    """Per attribute, the accuracy of a uniform guess among the values the generator could
    have drawn for each one-group scene (colour: the colours that contrast with its
    background), averaged over the scenes."""
    one = [s for s in scenes if len(s.groups) == 1]
    if not one:
        return {a: float("nan") for a in ATTRS}
    colours = np.mean([1 / len(FOREGROUNDS[s.background]) for s in one])
    return {"count": 1 / MAX_COUNT, "colour": float(colours), "shape": 1 / len(SHAPES),
            "position": 1 / len(POSITIONS), "background": 1 / len(PALETTE)}  # fmt: skip


def held_out_table(answers: list[str], scenes: list[Scene]) -> dict[str, Any]:
    """The held-out score of "Describe the image." answers to ``scenes``: per attribute the
    accuracy, chance (:func:`chance`) and the same answers scored against the next scene's
    truth (``other_image``: what answering without looking at the image reaches); plus exact
    match and how many answers are well-formed one-group captions (``well_formed``)."""
    truths = [caption_for(s) for s in scenes]
    rolled = scenes[1:] + scenes[:1]
    got, other = score(answers, truths, scenes), score(answers, [caption_for(s) for s in rolled],
                                                       rolled)  # fmt: skip
    guess = chance(scenes)
    return {
        "scenes": len(scenes),
        "exact": got["exact"],
        "exact_other_image": other["exact"],
        "well_formed": float(np.mean([attributes(a) is not None for a in answers])),
        "attributes": {
            a: {"accuracy": got[a], "chance": guess[a], "other_image": other[a]} for a in ATTRS
        },
    }


def format_table(table: dict[str, Any]) -> str:
    """:func:`held_out_table` as a console table, one row per attribute."""
    lines = [f"  {'attribute':<12}{'held-out':>10}{'chance':>9}{'other image':>13}"]
    for a, row in table["attributes"].items():
        lines.append(
            f"  {a:<12}{row['accuracy']:>10.1%}{row['chance']:>9.1%}{row['other_image']:>13.1%}"
        )
    lines.append(
        f"  {'exact':<12}{table['exact']:>10.1%}{'':>9}{table['exact_other_image']:>13.1%}"
        f"   ({table['scenes']} held-out scenes; {table['well_formed']:.0%} of the answers are "
        "well-formed captions)"
    )
    return "\n".join(lines)
