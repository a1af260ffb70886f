"""Duplicates across a run: multi-index hashing against brute force and imagehash."""

from __future__ import annotations

import random

import imagehash
import numpy as np
import pytest
from PIL import Image

from neo_data.curate.dedup import (  # noqa: E402
    MASK64,
    DedupItem,
    Duplicate,
    find_duplicates,
    find_duplicates_brute_force,
    hamming,
)
from neo_data.curate.filters import ImageInfo, inspect_image, phash_to_int  # noqa: E402
from neo_data.manifest.curate import FilterSpec  # noqa: E402
from neo_data.synthetic.crawl import encode, smooth_image  # noqa: E402


def test_phash_bits_and_distance_match_imagehash():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = imagehash.ImageHash(rng.integers(0, 2, (8, 8)).astype(bool))
        b = imagehash.ImageHash(rng.integers(0, 2, (8, 8)).astype(bool))
        ia, ib = phash_to_int(a), phash_to_int(b)
        assert -(1 << 63) <= ia < (1 << 63)  # fits Arrow int64
        assert f"{ia & MASK64:016x}" == str(a)  # same bit order as imagehash prints
        assert hamming(ia, ib) == a - b


def _clustered_hashes(rng: random.Random, n: int) -> list[int]:
    centres = [rng.getrandbits(64) for _ in range(max(1, n // 8))]
    out = []
    for _ in range(n):
        h = rng.choice(centres)
        for _ in range(rng.randint(0, 9)):
            h ^= 1 << rng.randrange(64)
        out.append(h - (1 << 64) if h >= 1 << 63 else h)
    return out


@pytest.mark.parametrize("bands_per_key", [1, 2, 3])
def test_multi_index_equals_brute_force(bands_per_key):
    rng = random.Random(bands_per_key)
    for trial in range(8):
        hashes = _clustered_hashes(rng, 300)
        items = [
            DedupItem(
                f"s{i:04d}",
                rng.choice([None, f"k{rng.randrange(40)}"]),
                h,
                rng.choice([None, 0, 2, 4, 8, 12]),
            )
            for i, h in enumerate(hashes)
        ]
        fast, slow = find_duplicates(items, bands_per_key), find_duplicates_brute_force(items)
        assert fast == slow, trial
        assert any(d.reason == "duplicate_near" for d in fast.values())


def test_first_wins_and_chains_end_at_a_kept_sample():
    a = 0
    b = 0b111  # 3 bits from a
    c = 0b111111  # 3 bits from b, 6 from a
    items = [DedupItem(n, None, h, 4) for n, h in (("a", a), ("b", b), ("c", c))]
    dups = find_duplicates(items)
    assert dups["b"].of == "a" and dups["b"].distance == 3
    # c repeats b (the rule looks at pairs, not at earlier decisions); b's own `of` leads on
    # to a, which is kept
    assert dups["c"] == Duplicate("duplicate_near", "b", 3) and "a" not in dups
    exact = find_duplicates([DedupItem("x", "k", None, None), DedupItem("y", "k", None, None)])
    assert exact["y"].reason == "duplicate_exact" and exact["y"].of == "x"
    # exact comes before near, even when a near sample is earlier
    both = find_duplicates([DedupItem("n", "k1", 1, 4), DedupItem("e", "k2", 0, 4),
                            DedupItem("z", "k2", 0, 4)])  # fmt: skip
    assert both["z"] == Duplicate("duplicate_exact", "e", 0)
    assert both["e"] == Duplicate("duplicate_near", "n", 1)


def test_every_chain_of_duplicates_ends_at_a_kept_sample():
    rng = random.Random(7)
    items = [DedupItem(f"s{i:04d}", None, h, 6) for i, h in enumerate(_clustered_hashes(rng, 400))]
    dups = find_duplicates(items)
    assert len(dups) > 50
    for sid in dups:
        seen = sid
        while seen in dups:
            nxt = dups[seen].of
            assert nxt < seen  # strictly earlier
            seen = nxt


def test_a_big_bucket_of_copies_equals_brute_force():
    """Thousands of copies of few pictures (large buckets go through the blocked path)."""
    rng = random.Random(3)
    base = _clustered_hashes(rng, 40)
    items = [DedupItem(f"s{i:05d}", None, rng.choice(base), rng.choice([None, 3, 9]))
             for i in range(600)]  # fmt: skip
    assert find_duplicates(items) == find_duplicates_brute_force(items)


def test_a_resized_recompressed_copy_is_near_and_other_pictures_are_not():
    f = FilterSpec()
    img = smooth_image(40, 640, 480)
    orig = inspect_image(encode(img, "JPEG", quality=95), f)
    copy = inspect_image(encode(img.resize((300, 225), Image.Resampling.LANCZOS), "WEBP"), f)
    assert isinstance(orig, ImageInfo) and isinstance(copy, ImageInfo)
    assert hamming(orig.phash, copy.phash) <= f.near_dedup_threshold
    others = [inspect_image(encode(smooth_image(s, 640, 480), "PNG"), f) for s in range(41, 61)]
    assert min(hamming(orig.phash, o.phash) for o in others) > f.near_dedup_threshold
