"""Packing as two pure functions: choose groups of samples, then build one pack from a group.

:func:`choose_groups` is first-fit decreasing under two budgets (tokens and image tokens): samples
are never split, every group fits both budgets, and the result is a deterministic function of
the inputs and the seed. :func:`build_pack` concatenates encoded samples into one shard row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def choose_groups(
    tokens: Sequence[int] | np.ndarray,
    image_tokens: Sequence[int] | np.ndarray,
    seq_len: int,
    max_image_tokens: int,
    seed: int = 0,
) -> list[list[int]]:
    """Group item indices into packs with first-fit decreasing under both budgets.

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
    rooms = _Rooms(max(1, tokens.size), seq_len, max_image_tokens)
    bins: list[list[int]] = []
    for i in order.tolist():
        need, need_img = int(tokens[i]), int(image_tokens[i])
        b = rooms.first_fit(need, need_img)
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        rooms.take(b, need, need_img)
    perm = rng.permutation(len(bins))
    return [bins[j] for j in perm]


class _Rooms:
    """Token and image-token room of every bin, in a max segment tree over bin numbers, so
    "the first bin with room for both" is a pruned descent rather than a scan of all bins.

    Unopened bins have full room, so the first fit of an item no open bin can take is the next
    new bin.
    """

    def __init__(self, capacity: int, seq_len: int, max_image_tokens: int):
        self.size = 1 << (capacity - 1).bit_length()
        self.tok = np.full(2 * self.size, seq_len, dtype=np.int64)
        self.img = np.full(2 * self.size, max_image_tokens, dtype=np.int64)

    def first_fit(self, need: int, need_img: int) -> int:
        tok, img = self.tok, self.img
        stack = [1]
        while stack:
            node = stack.pop()
            if tok[node] < need or img[node] < need_img:
                continue  # nothing below fits both
            if node >= self.size:
                return node - self.size
            stack.append(2 * node + 1)  # right after left: leftmost first
            stack.append(2 * node)
        raise ValueError(f"no bin fits {need} tokens / {need_img} image tokens")

    def take(self, b: int, need: int, need_img: int) -> None:
        node = b + self.size
        self.tok[node] -= need
        self.img[node] -= need_img
        node //= 2
        while node:
            self.tok[node] = max(self.tok[2 * node], self.tok[2 * node + 1])
            self.img[node] = max(self.img[2 * node], self.img[2 * node + 1])
            node //= 2


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
