"""The demo dataset: a deterministic curated dataset of synthetic images with exact captions.

Every image shows a :class:`~neo_data.synthetic.scenes.Scene` and every caption and answer is
generated from it (:mod:`neo_data.synthetic.texts`); the structured scene is kept in each row's
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

import random
import sys
from collections.abc import Callable
from typing import Any

from neo_data.format.storage import url_to_fs
from neo_data.synthetic.evaluate import unseen_scenes
from neo_data.synthetic.render import EXTENSIONS, render_scene, sample_format, sample_image_size
from neo_data.synthetic.rows import ORIGINAL_PROVENANCE, image_entry, synthetic_row, write_curated
from neo_data.synthetic.scenes import Scene, make_scene
from neo_data.synthetic.texts import (
    SYSTEM_PROMPTS,
    caption_for,
    one_image_chat,
    text_document,
    two_image_chat,
)

GENERATOR_VERSION = 1  # bump when the same seed would give different rows
GENERATOR = f"neo_data.synthetic.dataset/v{GENERATOR_VERSION}"  # in each row's meta

DEFAULT_CAPTIONS, DEFAULT_CONVERSATIONS, DEFAULT_TEXTS = 400, 200, 300
CAPTION_SOURCE = "demo-captions"
CONVERSATION_SOURCE = "demo-conversations"
TEXT_SOURCE = "demo-text"


def _rng(seed: int, stream: str, row: int) -> random.Random:
    """The RNG of one row of one stream (string seeds are hashed with SHA-512: stable)."""
    return random.Random(f"neo-demo/v{GENERATOR_VERSION}/{seed}/{stream}/{row}")


def _render_images(
    scenes: list[Scene], rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render each scene at a random size and format: (image entries, meta per image)."""
    entries, metas = [], []
    for scene in scenes:
        size, fmt = sample_image_size(rng), sample_format(rng)
        entries.append(image_entry(render_scene(scene, size, fmt), size))
        metas.append({"format": fmt, "width": size[0], "height": size[1]})
    return entries, metas


def _row(
    kind: str, source: str, seed: int, row: int, *, url: str, meta: dict[str, Any], **columns: Any
) -> dict[str, Any]:
    return synthetic_row(
        kind, source, seed, row, generator=GENERATOR, url=url, meta=meta, **columns
    )


def conversation_scenes(rng: random.Random) -> list[Scene]:
    """One scene, or two (one chat in five): the first draws of a conversation row's RNG."""
    return [make_scene(rng) for _ in range(2 if rng.random() < 0.2 else 1)]


def demo_caption_row(seed: int, row: int) -> dict[str, Any]:
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


def demo_conversation_row(seed: int, row: int) -> dict[str, Any]:
    """Row ``row`` of ``demo-conversations``: Q&A about one or two images, some with a system turn."""
    rng = _rng(seed, "conversations", row)
    scenes = conversation_scenes(rng)
    images, image_meta = _render_images(scenes, rng)
    system = (
        [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.15 else []
    )
    chat = one_image_chat(scenes[0], rng) if len(scenes) == 1 else two_image_chat(scenes, rng)
    meta = {"scenes": [s.to_meta() for s in scenes], "images": image_meta}
    url = f"demo://conversations/{row:06d}"
    columns = {"images": images, "conversation": system + chat}
    return _row("conversation", CONVERSATION_SOURCE, seed, row, url=url, meta=meta, **columns)


def demo_text_row(seed: int, row: int) -> dict[str, Any]:
    """Row ``row`` of ``demo-text``: a short synthetic document, every token supervised."""
    text, topics, scenes = text_document(_rng(seed, "text", row))
    meta = {"topics": topics, "described_scenes": [s.to_meta() for s in scenes]}
    url = f"demo://text/{row:06d}.txt"
    return _row("text", TEXT_SOURCE, seed, row, url=url, meta=meta, text=text)


# File stem -> row builder, in writing order; the stem is the source name without "demo-".
ROW_BUILDERS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "captions": demo_caption_row,
    "conversations": demo_conversation_row,
    "text": demo_text_row,
}


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
    fs, root = url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    paths = []
    for stem, count in counts.items():
        for file_index, start in enumerate(range(0, count, rows_per_file)):
            stop = min(count, start + rows_per_file)
            rows = [ROW_BUILDERS[stem](seed, r) for r in range(start, stop)]
            paths.append(
                write_curated(f"{out_dir.rstrip('/')}/{stem}-{file_index:05d}.parquet", rows)
            )
    return paths


def training_scenes(
    seed: int,
    captions: int = DEFAULT_CAPTIONS,
    conversations: int = DEFAULT_CONVERSATIONS,
    texts: int = DEFAULT_TEXTS,
) -> list[Scene]:
    """Every scene the dataset of these arguments shows or describes, without rendering any."""
    scenes = [make_scene(_rng(seed, "captions", r)) for r in range(captions)]
    for r in range(conversations):
        scenes += conversation_scenes(_rng(seed, "conversations", r))
    for r in range(texts):
        scenes += text_document(_rng(seed, "text", r))[2]
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
    Render them with :func:`~neo_data.synthetic.render.render_scene` and ask
    :func:`~neo_data.synthetic.texts.qa_for` to build an exact-match eval.
    """
    training = training_scenes(seed, captions, conversations, texts)
    return unseen_scenes(training, lambda index: make_scene(_rng(seed, "held-out", index)), n)


def main(argv: list[str] | None = None) -> None:
    """``python -m neo_data.synthetic.dataset OUT_DIR [SEED]``: write the default demo dataset."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        raise SystemExit("usage: python -m neo_data.synthetic.dataset OUT_DIR [SEED]")
    paths = write_demo_dataset(args[0], seed=int(args[1]) if len(args) == 2 else 0)
    print("\n".join(paths))


if __name__ == "__main__":
    main()
