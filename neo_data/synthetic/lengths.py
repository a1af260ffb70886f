"""Synthetic length distributions for packing tests and benchmarks (no images are made)."""

from __future__ import annotations

import numpy as np

from neo_data.encoding.images import smart_resize

TEMPLATE_TOKENS = (
    12  # <|im_start|>user\n <img> </img> <|im_end|>\n<|im_start|>assistant\n ... <|im_end|>\n
)


def realistic_mix(
    n: int,
    seed: int = 0,
    text_fraction: float = 0.3,
    min_pixels: int = 256 * 256,
    max_pixels: int = 2048 * 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, image_tokens)`` of ``n`` samples: captions of 5 to 200 words (about 1.3 tokens
    a word), images with sides uniform in 256..2048 px smart-resized for the pixel budget, and
    ``text_fraction`` text-only documents of 50 to 2,000 tokens."""
    rng = np.random.default_rng(seed)
    is_text = rng.random(n) < text_fraction
    words = rng.integers(5, 201, n)
    caption = np.ceil(words * 1.3).astype(np.int64)
    sides = rng.integers(256, 2049, (n, 2))
    grid = np.array(
        [np.prod(smart_resize(int(h), int(w), min_pixels, max_pixels)) // 1024 for h, w in sides]
    )
    image_tokens = np.where(is_text, 0, grid)
    tokens = np.where(is_text, rng.integers(50, 2001, n), caption + image_tokens + TEMPLATE_TOKENS)
    return tokens.astype(np.int64), image_tokens.astype(np.int64)
