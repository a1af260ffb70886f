"""The `curate:` section of a manifest."""

from __future__ import annotations

from neo_data.spec_base import Strict


class CurateSpec(Strict):
    """Filled in by the curate job."""
