"""The `train:` section of a manifest."""

from __future__ import annotations

from neo_data.spec_base import Strict


class TrainSpec(Strict):
    """Filled in by the train job."""
