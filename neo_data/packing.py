"""Packing as two pure functions: choose groups of samples, then build one pack from a group.

:func:`choose_groups` is best-fit decreasing under two budgets (tokens and image tokens): samples
are never split, every group fits both budgets, and the result is a deterministic function of
the inputs and the seed. :func:`build_pack` concatenates encoded samples into one shard row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sortedcontainers import SortedList

# How many fitting bins (by tokens) best-fit inspects for image-token room before opening a new
# one; bounds the cost when the image budget, not the token budget, is what binds.
_SCAN_LIMIT = 64


def choose_groups(
    tokens: Sequence[int] | np.ndarray,
    image_tokens: Sequence[int] | np.ndarray,
    seq_len: int,
    max_image_tokens: int,
    seed: int = 0,
) -> list[list[int]]:
    """Group item indices into packs with best-fit decreasing.

    Args:
        tokens: ``[N]`` tokens per item; each must be ``<= seq_len``.
        image_tokens: ``[N]`` image tokens per item; each must be ``<= max_image_tokens``.
        seed: orders equal-length items and the returned packs.

    Returns:
        Lists of item indices, one per pack, in a seeded shuffled order; items inside a pack in
        decreasing length.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    image_tokens = np.asarray(image_tokens, dtype=np.int64)
    if tokens.shape != image_tokens.shape:
        raise ValueError(f"tokens {tokens.shape} and image_tokens {image_tokens.shape} differ")
    if tokens.size and (tokens.max() > seq_len or image_tokens.max() > max_image_tokens):
        raise ValueError("an item is larger than the pack budget; the encoder must drop it first")
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(tokens.size)
    order = np.lexsort((tiebreak, -tokens))  # longest first, seeded among equals

    bins: list[list[int]] = []
    room_img: list[int] = []
    by_room = SortedList()  # (token room, bin index)
    for i in order.tolist():
        need, need_img = int(tokens[i]), int(image_tokens[i])
        chosen = -1
        start = by_room.bisect_left((need, -1))
        for room, b in by_room.islice(start, start + _SCAN_LIMIT):
            if room_img[b] >= need_img:
                chosen = b
                by_room.remove((room, b))
                by_room.add((room - need, b))
                break
        if chosen < 0:
            chosen = len(bins)
            bins.append([])
            room_img.append(max_image_tokens)
            by_room.add((seq_len - need, chosen))
        bins[chosen].append(i)
        room_img[chosen] -= need_img
    perm = rng.permutation(len(bins))
    return [bins[j] for j in perm]


PER_TOKEN = ("input_ids", "labels", "t_index", "h_index", "w_index")


def build_pack(pack_id: str, bucket: str, samples: Sequence[dict]) -> dict:
    """Concatenate encoded samples (dicts of the encoded-sample columns) into one packed row.

    Sample ``k``'s image ordinals are offset by the number of images before it, so
    ``image_ordinal`` indexes ``images`` of the pack; T restarts at 0 in every sample (each
    sample was encoded from 0); ``cu_seqlens`` holds the sample boundaries.
    """
    if not samples:
        raise ValueError(f"pack {pack_id}: no samples")
    lengths = [len(s["input_ids"]) for s in samples]
    cu = np.zeros(len(samples) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    row: dict = {"pack_id": pack_id, "bucket": bucket}
    for col in PER_TOKEN:
        row[col] = np.concatenate([np.asarray(s[col], dtype=np.int32) for s in samples])
    ordinals, images, heights, widths = [], [], [], []
    for s in samples:
        o = np.asarray(s["image_ordinal"], dtype=np.int32)
        ordinals.append(np.where(o >= 0, o + len(images), -1).astype(np.int32))
        images.extend(s["images"])
        heights.extend(s["image_heights"])
        widths.extend(s["image_widths"])
    row["image_ordinal"] = np.concatenate(ordinals)
    row["cu_seqlens"] = cu
    row["num_tokens"] = int(cu[-1])
    row["num_image_tokens"] = int((row["image_ordinal"] >= 0).sum())
    row["num_supervised"] = int((row["labels"] >= 0).sum())
    row["sample_ids"] = [s["sample_id"] for s in samples]
    row["sample_sources"] = [s["source"] for s in samples]
    row["sample_text_only"] = [bool(s["text_only"]) for s in samples]
    row["images"] = images
    row["image_heights"] = heights
    row["image_widths"] = widths
    return row
