"""The `recaption:` section of a manifest."""

from __future__ import annotations

from neo_data.spec_base import Strict


class RecaptionSpec(Strict):
    """Filled in by the recaption job."""
