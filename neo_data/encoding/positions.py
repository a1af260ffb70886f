"""Native-RoPE index rule: the T/H/W position of every token.

This is the single home of the rule (architecture doc, section 4). The packer writes its output
into shards; the model's generation path calls :func:`next_t` / :func:`thw_indices` for prompts.

* Every token that is not ``<IMG_CONTEXT>`` advances T by one.
* All ``<IMG_CONTEXT>`` tokens of one image share one T: the T of its ``<img>`` plus one; the
  following token (``</img>``) gets that plus one. A whole image costs one T step.
* Image tokens get H = row, W = column of the image's token grid (row-major, from (0, 0) for
  every image); every other token has H = W = 0.
* T starts at ``t_start`` (0 for a new packed sample) and runs on across images and turns.

Example (a 2x2 image after ``<|im_start|>user\\n``)::

    tokens  <|im_start|> user \\n <img> I I I I </img> \\n
    T       0            1    2  3    4 4 4 4 5      6
    H       0            0    0  0    0 0 1 1 0      0
    W       0            0    0  0    0 1 0 1 0      0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neo_data.encoding.tokens import IMG_CONTEXT_ID


class ImageTokenMismatch(ValueError):
    """The ``<IMG_CONTEXT>`` runs in a token sequence do not match the image grids given."""


def image_runs(token_ids: np.ndarray) -> list[tuple[int, int]]:
    """Return ``(start, end)`` of every maximal run of ``<IMG_CONTEXT>`` tokens, in order."""
    is_img = np.asarray(token_ids) == IMG_CONTEXT_ID
    if not is_img.any():
        return []
    edges = np.diff(np.concatenate(([0], is_img.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def thw_indices(
    token_ids: Sequence[int] | np.ndarray,
    grids: Sequence[tuple[int, int]],
    t_start: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Compute the Native-RoPE indices of one sample.

    Args:
        token_ids: ``[L]`` token ids of one sample (one packed sample, or one prompt).
        grids: ``(rows, cols)`` token grid of each image, in the order the images appear;
            image ``k`` must be exactly ``rows * cols`` consecutive ``<IMG_CONTEXT>`` tokens.
        t_start: T of the first token (0 for a new sample; a continuation passes ``next_t``).

    Returns:
        ``(t, h, w, image_ordinal)``, each ``[L]`` int32. ``image_ordinal`` is the index into
        ``grids`` for image tokens and -1 for every other token.

    Raises:
        ImageTokenMismatch: the image-token runs do not match ``grids`` one to one.
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    n = ids.shape[0]
    runs = image_runs(ids)
    if len(runs) != len(grids):
        raise ImageTokenMismatch(
            f"{len(runs)} <IMG_CONTEXT> runs in the tokens but {len(grids)} image grids given"
        )
    t = np.empty(n, dtype=np.int32)
    h = np.zeros(n, dtype=np.int32)
    w = np.zeros(n, dtype=np.int32)
    ordinal = np.full(n, -1, dtype=np.int32)

    # Each token advances T by one except image tokens: an image run as a whole advances by one.
    step = np.ones(n, dtype=np.int32)
    for k, ((start, end), (rows, cols)) in enumerate(zip(runs, grids, strict=True)):
        if end - start != rows * cols:
            raise ImageTokenMismatch(
                f"image {k}: {end - start} <IMG_CONTEXT> tokens but its grid is "
                f"{rows}x{cols} = {rows * cols}"
            )
        step[start + 1 : end] = 0
        h[start:end] = np.repeat(np.arange(rows, dtype=np.int32), cols)
        w[start:end] = np.tile(np.arange(cols, dtype=np.int32), rows)
        ordinal[start:end] = k
    if n:
        np.cumsum(step, out=t)
        t += t_start - 1
    return t, h, w, ordinal


def next_t(t: np.ndarray | Sequence[int]) -> int:
    """T of the next generated token: one past the largest T so far (0 for an empty prefix)."""
    t = np.asarray(t)
    return int(t.max()) + 1 if t.size else 0
