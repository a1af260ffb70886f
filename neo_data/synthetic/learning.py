"""The data of the "does the model learn" benchmark (``benchmarks/bench_learning.py``): an easier
cut of the demo's scenes, with a held-out set to measure on.

Scenes are shapes only (no words), at most ``groups`` groups each, drawn from RNG streams of
their own (``bench-learning/<seed>/<stream>/<i>``); every image is a square PNG of ``size`` px.
Training rows are captions and conversations ("Describe the image." among ``turns`` question /
answer pairs); the held-out scenes have captions no training scene has; the language-model
stage gets the training conversations as chat text with the images removed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from neo_data.encoding.tokens import NeoTokenizer, render_turns
from neo_data.format.schema import IMAGE_PLACEHOLDER
from neo_data.synthetic.evaluate import unseen_scenes
from neo_data.synthetic.render import draw_scene, render_scene
from neo_data.synthetic.rows import ORIGINAL_PROVENANCE, image_entry, synthetic_row
from neo_data.synthetic.scenes import Scene, make_scene
from neo_data.synthetic.texts import DESCRIBE_QUESTION, caption_for, describe_chat, qa_for

STREAM = "bench-learning"
GENERATOR = "neo_data.synthetic.learning/v1"  # in each row's meta


def shape_scene(seed: int, stream: str, i: int, groups: int) -> Scene:
    """Row ``i`` of ``stream``: a shapes-only scene of at most ``groups`` groups, from its own RNG."""
    rng = random.Random(f"{STREAM}/{seed}/{stream}/{i}")
    return make_scene(rng, max_groups=groups, word_fraction=0.0)


def shape_scenes(seed: int, stream: str, n: int, groups: int) -> list[Scene]:
    """``n`` shapes-only scenes of at most ``groups`` groups, row ``i`` from its own RNG."""
    return [shape_scene(seed, stream, i, groups) for i in range(n)]


def held_out_shape_scenes(train: list[Scene], seed: int, n: int, groups: int) -> list[Scene]:
    """``n`` scenes whose caption no training scene has (and distinct among themselves)."""
    return unseen_scenes(train, lambda i: shape_scenes(seed, f"held-out-{i}", 1, groups)[0], n)


def png_entry(scene: Scene, size: int) -> dict[str, Any]:
    """The scene as a ``size`` x ``size`` PNG image entry."""
    return image_entry(render_scene(scene, (size, size), "png"), (size, size))


def caption_rows(
    scenes: list[Scene], size: int, source: str, images: list[Scene] | None = None
) -> list[dict[str, Any]]:
    """Caption rows; ``images`` (default: the scenes themselves) are the pictures shown, so a
    caption can be paired with another scene's image (the shuffled-image baseline)."""
    rows = []
    for i, (scene, shown) in enumerate(zip(scenes, images or scenes, strict=True)):
        caption = {"text": caption_for(scene), "provenance": ORIGINAL_PROVENANCE}
        rows.append(
            synthetic_row("caption", source, 0, i, generator=GENERATOR, url=f"bench://{source}/{i}",
                          meta={"scenes": [scene.to_meta()]}, images=[png_entry(shown, size)],
                          captions=[caption])
        )  # fmt: skip
    return rows


def conversation_rows(
    scenes: list[Scene], size: int, seed: int, turns: int
) -> list[dict[str, Any]]:
    """One conversation row per scene: ``turns`` question/answer pairs about its image."""
    rows = []
    for i, scene in enumerate(scenes):
        chat = describe_chat(scene, random.Random(f"{STREAM}/{seed}/chat/{i}"), turns)
        rows.append(
            synthetic_row("conversation", "bench-conversations", 0, i, generator=GENERATOR,
                          url=f"bench://chat/{i}", meta={"scenes": [scene.to_meta()]},
                          images=[png_entry(scene, size)], conversation=chat)
        )  # fmt: skip
    return rows


def lm_texts(
    tok: NeoTokenizer, scenes: list[Scene], seed: int, turns: int
) -> list[tuple[list[int], list[int]]]:
    """The training conversations as chat text with the image removed: (token ids, labels),
    the answers supervised (the packer's rule), as in a chat model's instruction data."""
    out = []
    for i, scene in enumerate(scenes):
        chat = describe_chat(scene, random.Random(f"{STREAM}/{seed}/lm/{i}"), turns)
        pairs = [(t["role"], t["content"].replace(f"{IMAGE_PLACEHOLDER}\n", "")) for t in chat]
        rendered = render_turns(tok, pairs, [])
        out.append((rendered.input_ids.tolist(), rendered.labels().tolist()))
    return out


def eval_images(scenes: list[Scene], size: int) -> list[Image.Image]:
    """The held-out scenes as decoded ``size`` x ``size`` RGB images (what a prompt takes)."""
    return [draw_scene(s, (size, size)) for s in scenes]


def eval_questions(scenes: list[Scene]) -> list[tuple[str, str]]:
    """One (question, exact answer) per scene, other than "Describe the image."."""
    return [
        next(qa for qa in qa_for(s, random.Random(f"{STREAM}/q/{i}")) if qa[0] != DESCRIBE_QUESTION)
        for i, s in enumerate(scenes)
    ]


@dataclass(frozen=True)
class WebRows:
    """The learning cut as the demo's raw sources (:func:`neo_data.synthetic.web.write_web_sources`):
    caption row ``r`` and conversation row ``r`` (``turns`` question/answer pairs, "Describe
    the image." among them) of shapes-only scenes of at most ``groups`` groups, each a
    ``size`` x ``size`` PNG. Row ``r`` of each kind has its own RNG, as in the demo dataset."""

    size: int = 96
    groups: int = 1
    turns: int = 3

    def caption_scene(self, seed: int, row: int) -> Scene:
        return shape_scene(seed, "web-captions", row, self.groups)

    def conversation_scene(self, seed: int, row: int) -> Scene:
        return shape_scene(seed, "web-conversations", row, self.groups)

    def caption(self, seed: int, row: int) -> tuple[list[tuple[bytes, str]], str]:
        """Caption row ``row``: its image ``[(bytes, extension)]`` and its exact caption."""
        scene = self.caption_scene(seed, row)
        return [(render_scene(scene, (self.size, self.size), "png"), "png")], caption_for(scene)

    def conversation(
        self, seed: int, row: int
    ) -> tuple[list[tuple[bytes, str]], list[dict[str, str]]]:
        """Conversation row ``row``: its image and its turns."""
        scene = self.conversation_scene(seed, row)
        chat = describe_chat(scene, random.Random(f"{STREAM}/{seed}/web-chat/{row}"), self.turns)
        return [(render_scene(scene, (self.size, self.size), "png"), "png")], chat

    def training_scenes(self, seed: int, captions: int, conversations: int) -> list[Scene]:
        """Every scene ``captions`` caption rows and ``conversations`` conversation rows show."""
        return [self.caption_scene(seed, r) for r in range(captions)] + [
            self.conversation_scene(seed, r) for r in range(conversations)
        ]

    def held_out(self, seed: int, n: int, captions: int, conversations: int) -> list[Scene]:
        """``n`` scenes no training row of these counts shows (caption-distinct)."""
        train = self.training_scenes(seed, captions, conversations)
        return held_out_shape_scenes(train, seed, n, self.groups)
