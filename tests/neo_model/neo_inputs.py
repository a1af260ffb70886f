"""Builders of model inputs for the neo_model tests: rendered samples and packs (the tiny
random models themselves come from :mod:`neo_model.testing`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import NeoTokenizer, render_turns


@dataclass
class Sample:
    """One rendered sample with its T/H/W indices and the grids of its images."""

    input_ids: np.ndarray
    labels: np.ndarray
    t: np.ndarray
    h: np.ndarray
    w: np.ndarray
    ordinal: np.ndarray
    grids: list[tuple[int, int]]


def make_sample(
    tok: NeoTokenizer, turns: list[tuple[str, str]], grids: list[tuple[int, int]] = ()
) -> Sample:
    rendered = render_turns(tok, turns, list(grids))
    t, h, w, ordinal = thw_indices(rendered.input_ids, list(grids))
    return Sample(rendered.input_ids, rendered.labels(), t, h, w, ordinal, list(grids))


def make_pack(samples: list[Sample], pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """A ``B = 1`` packed row as the model takes it (image ordinals unique within the pack)."""
    ordinals, offset = [], 0
    for s in samples:
        ordinals.append(np.where(s.ordinal >= 0, s.ordinal + offset, -1))
        offset += len(s.grids)
    cols = {
        "input_ids": [s.input_ids for s in samples],
        "labels": [s.labels for s in samples],
        "t_index": [s.t for s in samples],
        "h_index": [s.h for s in samples],
        "w_index": [s.w for s in samples],
        "image_ordinal": ordinals,
    }
    pack = {k: np.concatenate(v).astype(np.int64) for k, v in cols.items()}
    n = len(pack["input_ids"])
    if pad_to is not None:
        fill = {"input_ids": 151643, "labels": -100, "image_ordinal": -1}
        for k in pack:
            pack[k] = np.concatenate([pack[k], np.full(pad_to - n, fill.get(k, 0))])
    out = {k: torch.from_numpy(v)[None] for k, v in pack.items()}
    out["cu_seqlens"] = torch.tensor(np.cumsum([0] + [len(s.input_ids) for s in samples]))
    return out


def model_inputs(pack: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(pack[k] for k in ("input_ids", "t_index", "h_index", "w_index", "image_ordinal"))


def random_images(grids: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 32 * r, 32 * c, generator=gen) for r, c in grids]
