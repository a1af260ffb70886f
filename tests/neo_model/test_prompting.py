"""Prompt preparation shared by ``neo chat``, ``neo serve`` and the ``neo`` recaption backend:
the pixel budget of a checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from neo_model.config import debug
from neo_model.prompting import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, pixel_budget

MAX = 8192 * 32 * 32  # above the released default, so each bound can come from either
MODEL = SimpleNamespace(config=debug().replace(min_pixels=2048, max_pixels=MAX))


def test_pixel_budget_explicit_then_checkpoint_then_released_default_per_bound():
    both = {"min_pixels": 2048, "max_pixels": MAX}
    assert pixel_budget(MODEL, both) == (2048, MAX)
    assert pixel_budget(MODEL, {}) == (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS) == (1280 * 32 * 32, 4096 * 32 * 32)
    assert pixel_budget(MODEL, {"max_pixels": MAX}, min_pixels=1024) == (1024, MAX)
    assert pixel_budget(MODEL, {"min_pixels": 2048}) == (2048, DEFAULT_MAX_PIXELS)
    assert pixel_budget(MODEL, {"max_pixels": MAX}) == (DEFAULT_MIN_PIXELS, MAX)
    assert pixel_budget(MODEL, both, max_pixels=4096) == (2048, 4096)
    with pytest.raises(ValueError, match="pixel budget 2048..1024: need 0 < min <= max"):
        pixel_budget(MODEL, both, max_pixels=1024)
