"""Exact and near duplicates across a whole curation run: the rule, and its pieces as array
functions that one partition at a time can run (``neo_data.curate.dedup_stage`` runs them on
Ray over hash-partitioned files; :func:`find_duplicates` runs them in one process).

**The rule.** Samples have a global order: manifest source, then source row (:func:`order_key`).
A sample is a duplicate when an *earlier* sample repeats it:

* ``duplicate_exact``: an earlier sample has the same exact key (sha256 of the image bytes, the
  conversation or the text); it names the earliest such sample;
* ``duplicate_near`` (when no exact one): an earlier sample's 64-bit perceptual hash is within
  this sample's source's Hamming threshold; it names the earliest such sample and the distance.

Every decision depends on a pair of samples only, never on an earlier decision, so it is the same
whichever partition, task or worker finds the pair, and across runs. The named sample may itself
be a duplicate of a still earlier one; following ``of`` always ends at a kept sample (each step
goes strictly earlier, and the earliest sample of a chain has no earlier repeat). Why not "repeat
of a *kept* sample" (greedy in order): that decision depends on every earlier decision, a chain
of length L needs L rounds; and not connected components: a chain of near pairs joins dissimilar
images into one cluster, which would then keep one of them only.

**Near candidates** (generalised pigeonhole): the hash is cut into ``m = t + r`` bands; two hashes
within distance ``t`` differ in at most ``t`` bands, so they agree exactly on at least ``r``, i.e.
on one of the ``C(m, r)`` keys made of ``r`` bands. Pairs are checked only inside a key's bucket.
``r = 1`` is plain multi-index hashing (buckets of N / 2^(64/(t+1)) hashes: quadratic at web
scale); ``r = 2`` (default: 15 keys of ~21 bits for t = 4) keeps buckets tiny up to billions.
The answer equals the brute-force scan (:func:`find_duplicates_brute_force`, tests).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MASK64 = (1 << 64) - 1
ORDER_ROW_BITS = 40  # order = source << 40 | row: 2^40 rows per source, 2^23 sources
EXACT, NEAR = 0, 1  # reason codes in pair arrays
REASONS = {EXACT: "duplicate_exact", NEAR: "duplicate_near"}
SMALL_GROUP = 32  # buckets up to this size are compared by shifts over the whole partition


def order_key(source: int, row: int) -> int:
    """The global order of a sample: manifest source first, then its row in the source."""
    return (source << ORDER_ROW_BITS) | row


def split_order(order: int) -> tuple[int, int]:
    return order >> ORDER_ROW_BITS, order & ((1 << ORDER_ROW_BITS) - 1)


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & MASK64).bit_count()


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread uint64 from a uint64 (bucket -> partition)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def exact_key_hash(keys: pa.Array) -> np.ndarray:
    """uint64 hash of each exact key (the partition of exact duplicates)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little")
         for k in keys.to_pylist()],
        dtype=np.uint64,
    )  # fmt: skip


@dataclass(frozen=True)
class BandScheme:
    """The near-candidate keys for thresholds up to ``max_threshold`` (see the module doc)."""

    max_threshold: int
    bands_per_key: int = 2

    @property
    def spans(self) -> list[tuple[int, int]]:
        m = self.max_threshold + self.bands_per_key
        edges = [round(i * 64 / m) for i in range(m + 1)]
        return [(edges[i], edges[i + 1] - edges[i]) for i in range(m)]

    @property
    def combos(self) -> list[tuple[int, ...]]:
        return list(itertools.combinations(range(len(self.spans)), self.bands_per_key))

    @property
    def num_keys(self) -> int:
        return len(self.combos)

    def keys(self, phash: np.ndarray) -> np.ndarray:
        """``[n, num_keys]`` uint64: each hash's value under every key (bands concatenated)."""
        h = phash.astype(np.uint64)
        spans = self.spans
        band = [(h >> np.uint64(s)) & np.uint64((1 << w) - 1) for s, w in spans]
        out = np.empty((len(h), self.num_keys), dtype=np.uint64)
        for c, combo in enumerate(self.combos):
            v, shift = np.zeros(len(h), dtype=np.uint64), 0
            for b in combo:
                v |= band[b] << np.uint64(shift)
                shift += spans[b][1]
            out[:, c] = v
        return out

    def partition(self, key_id: np.ndarray, value: np.ndarray, partitions: int) -> np.ndarray:
        salted = value.astype(np.uint64) ^ mix64(key_id.astype(np.uint64) + np.uint64(1))
        return (mix64(salted) % np.uint64(partitions)).astype(np.int64)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Pairs inside one partition
# ---------------------------------------------------------------------------------------------


def exact_pairs(keys: pa.Array, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(j, of)``: every sample with an earlier same-key sample, and the earliest one."""
    if len(order) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    t = pa.table({"k": keys, "o": pa.array(order, pa.int64())}).sort_by(
        [("k", "ascending"), ("o", "ascending")]
    )
    k, o = t.column("k").combine_chunks(), t.column("o").to_numpy()
    start = np.ones(len(o), dtype=bool)
    start[1:] = pc.not_equal(k[1:], k[:-1]).to_numpy(zero_copy_only=False)
    first = np.maximum.accumulate(np.where(start, np.arange(len(o)), 0))
    dup = ~start
    return o[dup], o[first[dup]]


def near_pairs(
    key_id: np.ndarray,
    value: np.ndarray,
    order: np.ndarray,
    phash: np.ndarray,
    threshold: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(j, of, distance)``: for each sample with an earlier near sample in one of its buckets
    (same ``key_id`` and ``value``), the earliest one. ``threshold`` -1: never a duplicate."""
    n = len(order)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    idx = np.lexsort((order, value, key_id))
    kid, val, o = key_id[idx], value[idx], order[idx]
    h, thr = phash[idx].astype(np.uint64), threshold[idx]
    start = np.ones(n, dtype=bool)
    start[1:] = (kid[1:] != kid[:-1]) | (val[1:] != val[:-1])
    group = np.cumsum(start) - 1
    sizes = np.bincount(group)
    big = sizes[group] > SMALL_GROUP
    best = np.full(n, -1, dtype=np.int64)  # index (sorted) of the earliest near sample
    best_d = np.zeros(n, dtype=np.int64)
    # small buckets: compare each sample with the one s places earlier, for every s at once;
    # larger s is earlier in the bucket, so the last hit is the earliest
    for s in range(1, min(SMALL_GROUP, int(sizes.max()))):
        a, b = np.arange(s, n), np.arange(0, n - s)
        same = (group[a] == group[b]) & ~big[a]
        if not same.any():
            break
        d = popcount(h[a] ^ h[b])
        hit = same & (d <= thr[a])
        best[a[hit]] = b[hit]
        best_d[a[hit]] = d[hit]
    # large buckets (often many copies of one picture): each sample against the first
    # occurrence of every distinct hash in its bucket, in blocks of bounded size
    for g in np.unique(group[big]):
        members = np.flatnonzero(group == g)  # sorted: earlier first
        uh, first = np.unique(h[members], return_index=True)
        first_at = members[first]
        block = max(1, (1 << 22) // len(uh))
        for lo in range(0, len(members), block):
            js = members[lo : lo + block]
            d = popcount(uh[None, :] ^ h[js][:, None])
            ok = (d <= thr[js][:, None]) & (first_at[None, :] < js[:, None])
            cand = np.where(ok, first_at[None, :], n)
            pick = cand.argmin(axis=1)
            has = cand[np.arange(len(js)), pick] < n
            best[js[has]] = first_at[pick[has]]
            best_d[js[has]] = d[has, pick[has]]
    found = best >= 0
    return earliest_per_sample(o[found], o[best[found]], best_d[found])


def earliest_per_sample(
    j: np.ndarray, of: np.ndarray, distance: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep, for each ``j``, the pair with the earliest ``of``."""
    if len(j) == 0:
        return j, of, distance
    idx = np.lexsort((of, j))
    j, of, distance = j[idx], of[idx], distance[idx]
    first = np.ones(len(j), dtype=bool)
    first[1:] = j[1:] != j[:-1]
    return j[first], of[first], distance[first]


def resolve(
    j: np.ndarray, of: np.ndarray, distance: np.ndarray, reason: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One decision per sample from every pair found for it: exact before near, then the
    earliest ``of``. Sorted by ``j``."""
    if len(j) == 0:
        return j, of, distance, reason
    idx = np.lexsort((of, reason, j))
    j, of, distance, reason = j[idx], of[idx], distance[idx], reason[idx]
    first = np.ones(len(j), dtype=bool)
    first[1:] = j[1:] != j[:-1]
    return j[first], of[first], distance[first], reason[first]


# ---------------------------------------------------------------------------------------------
# In one process (tests, benchmarks): the same pieces, one partition
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupItem:
    sample_id: str
    exact_key: str | None  # e.g. "img:<sha256>"; None: not deduplicated exactly
    phash: int | None  # signed or unsigned 64-bit; None: no near-duplicate check
    near_threshold: int | None  # Hamming distance; None: never dropped as a near duplicate


@dataclass(frozen=True)
class Duplicate:
    reason: str  # duplicate_exact | duplicate_near
    of: str  # sample_id of the earliest sample it repeats
    distance: int  # Hamming distance (0 for exact)


def find_duplicates(items: Iterable[DedupItem], bands_per_key: int = 2) -> dict[str, Duplicate]:
    """Sample id -> why it is a duplicate, for ``items`` in their global order."""
    items = list(items)
    ids = [i.sample_id for i in items]
    ex = [(k, i.exact_key) for k, i in enumerate(items) if i.exact_key is not None]
    ej, eof = exact_pairs(pa.array([k for _, k in ex], pa.string()), np.array([o for o, _ in ex]))
    nr = [(k, i) for k, i in enumerate(items) if i.phash is not None]
    thr = [i.near_threshold for _, i in nr if i.near_threshold is not None]
    scheme = BandScheme(max(thr, default=0), bands_per_key)
    order = np.array([k for k, _ in nr], dtype=np.int64)
    phash = np.array([i.phash & MASK64 for _, i in nr], dtype=np.uint64)
    t = np.array([-1 if i.near_threshold is None else i.near_threshold for _, i in nr], np.int64)
    keys = scheme.keys(phash)
    kid = np.tile(np.arange(scheme.num_keys), len(nr))
    nj, nof, nd = near_pairs(
        kid, keys.reshape(-1), np.repeat(order, scheme.num_keys), np.repeat(phash, scheme.num_keys),
        np.repeat(t, scheme.num_keys),
    )  # fmt: skip
    j, of, d, reason = resolve(
        np.concatenate([ej, nj]),
        np.concatenate([eof, nof]),
        np.concatenate([np.zeros(len(ej), np.int64), nd]),
        np.concatenate([np.full(len(ej), EXACT), np.full(len(nj), NEAR)]),
    )
    return {
        ids[a]: Duplicate(REASONS[int(r)], ids[b], int(dist))
        for a, b, dist, r in zip(j, of, d, reason, strict=True)
    }


def find_duplicates_brute_force(items: Iterable[DedupItem]) -> dict[str, Duplicate]:
    """The same rule by scanning every earlier sample (the reference for tests)."""
    items = list(items)
    out: dict[str, Duplicate] = {}
    for k, item in enumerate(items):
        earlier = items[:k]
        exact = next(
            (e for e in earlier if item.exact_key is not None and e.exact_key == item.exact_key),
            None,
        )
        if exact is not None:
            out[item.sample_id] = Duplicate("duplicate_exact", exact.sample_id, 0)
            continue
        if item.phash is None or item.near_threshold is None:
            continue
        near = next(
            (e for e in earlier
             if e.phash is not None and hamming(e.phash, item.phash) <= item.near_threshold),
            None,
        )  # fmt: skip
        if near is not None:
            out[item.sample_id] = Duplicate(
                "duplicate_near", near.sample_id, hamming(near.phash, item.phash)
            )
    return out
