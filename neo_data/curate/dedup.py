"""Exact and near duplicates across a whole curation run (not per shard).

Samples are visited in a fixed order (manifest source order, then row), so the decision is the
same on every run and machine: the first sample holding a key is kept, later ones are dropped as
``duplicate_exact`` (same sha256 key) or ``duplicate_near`` (perceptual hash within a Hamming
threshold of a *kept* sample's hash).

Near duplicates use multi-index hashing: a 64-bit hash is cut into ``t + 1`` bands; two hashes
within Hamming distance ``t`` agree exactly on at least one band (pigeonhole), so a lookup checks
only the hashes sharing a band instead of every kept hash. The answer equals the brute-force scan
(``tests/neo_data/curate/test_dedup.py`` compares them, and with imagehash's own distance).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class DedupItem:
    sample_id: str
    exact_key: str | None  # e.g. "img:<sha256>"; None: not deduplicated exactly
    phash: int | None  # signed or unsigned 64-bit; None: no near-duplicate check
    near_threshold: int | None  # Hamming distance; None: no near-duplicate check


@dataclass(frozen=True)
class Duplicate:
    reason: str  # duplicate_exact | duplicate_near
    of: str  # sample_id of the kept sample
    distance: int  # Hamming distance (0 for exact)


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & MASK64).bit_count()


class NearIndex:
    """Kept 64-bit hashes, searchable for any threshold up to ``max_threshold``."""

    def __init__(self, max_threshold: int):
        self.bands = max_threshold + 1
        edges = [round(i * 64 / self.bands) for i in range(self.bands + 1)]
        self.spans = [(edges[i], edges[i + 1] - edges[i]) for i in range(self.bands)]
        self.tables: list[dict[int, list[tuple[int, str]]]] = [
            defaultdict(list) for _ in range(self.bands)
        ]
        self.order: dict[str, int] = {}  # sample id -> insertion rank (earliest wins ties)

    def _keys(self, h: int) -> list[int]:
        h &= MASK64
        return [(h >> start) & ((1 << width) - 1) for start, width in self.spans]

    def add(self, h: int, sample_id: str) -> None:
        self.order[sample_id] = len(self.order)
        for table, key in zip(self.tables, self._keys(h), strict=True):
            table[key].append((h & MASK64, sample_id))

    def nearest(self, h: int, threshold: int) -> tuple[str, int] | None:
        """The first-added kept hash within ``threshold`` (ties: the earliest), if any."""
        h &= MASK64
        best: tuple[int, str, int] | None = None  # (rank, id, distance)
        seen: set[str] = set()
        for table, key in zip(self.tables, self._keys(h), strict=True):
            for other, sid in table.get(key, ()):
                if sid in seen:
                    continue
                seen.add(sid)
                d = hamming(h, other)
                if d <= threshold and (best is None or self.order[sid] < best[0]):
                    best = (self.order[sid], sid, d)
        return None if best is None else (best[1], best[2])


def find_duplicates(items: Iterable[DedupItem]) -> dict[str, Duplicate]:
    """Sample id -> why it is a duplicate, for ``items`` in their priority order."""
    items = list(items)
    thresholds = [i.near_threshold for i in items if i.near_threshold is not None]
    index = NearIndex(max(thresholds, default=0))
    first_of_key: dict[str, str] = {}
    out: dict[str, Duplicate] = {}
    for item in items:
        if item.exact_key is not None:
            holder = first_of_key.get(item.exact_key)
            if holder is not None:
                out[item.sample_id] = Duplicate("duplicate_exact", holder, 0)
                continue
        if item.phash is not None and item.near_threshold is not None:
            hit = index.nearest(item.phash, item.near_threshold)
            if hit is not None:
                out[item.sample_id] = Duplicate("duplicate_near", hit[0], hit[1])
                continue
        if item.exact_key is not None:
            first_of_key[item.exact_key] = item.sample_id
        if item.phash is not None:
            index.add(item.phash, item.sample_id)
    return out


def find_duplicates_brute_force(items: Iterable[DedupItem]) -> dict[str, Duplicate]:
    """The same decisions by scanning every kept sample (the reference for tests)."""
    kept: list[DedupItem] = []
    out: dict[str, Duplicate] = {}
    for item in items:
        exact = next(
            (k for k in kept if item.exact_key is not None and k.exact_key == item.exact_key),
            None,
        )
        if exact is not None:
            out[item.sample_id] = Duplicate("duplicate_exact", exact.sample_id, 0)
            continue
        if item.phash is not None and item.near_threshold is not None:
            near = next(
                (
                    k
                    for k in kept
                    if k.phash is not None and hamming(k.phash, item.phash) <= item.near_threshold
                ),
                None,
            )
            if near is not None:
                out[item.sample_id] = Duplicate(
                    "duplicate_near", near.sample_id, hamming(near.phash, item.phash)
                )
                continue
        kept.append(item)
    return out
