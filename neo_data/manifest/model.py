"""The manifest: the YAML file users edit, validated at the boundary with pydantic.

A manifest names its stage, the curated samples to pack and where the packs go (``data``), how
to pack (``pack``, :mod:`neo_data.manifest.pack`), and the sections of the other jobs
(``curate``, ``recaption``, ``train``: one spec module each); a job refuses a manifest without
its section. Unknown keys are rejected (a typo never silently falls back to a default).
Reading files, ``extends`` and errors with file and line: :mod:`neo_data.manifest.loading`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from neo_data.manifest.base import Strict
from neo_data.manifest.curate import CurateSpec
from neo_data.manifest.pack import PackSpec
from neo_data.manifest.recaption import RecaptionSpec
from neo_data.manifest.train import TrainSpec

Stage = Literal["pretrain", "midtrain", "sft"]

# Pixel budgets per stage (architecture doc, section 5).
STAGE_PIXELS: dict[str, tuple[int, int]] = {
    "pretrain": (256 * 256, 2048 * 2048),
    "midtrain": (256 * 256, 4096 * 4096),
    "sft": (256 * 256, 4096 * 4096),
}
STAGE_SEQ_LEN = {"pretrain": 16_384, "midtrain": 32_768, "sft": 32_768}


class DataSpec(Strict):
    curated: list[str] = Field(min_length=1)  # files, directories or globs; local or s3://
    packed: str  # output directory of the packed dataset


class Manifest(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    stage: Stage = "pretrain"
    data: DataSpec
    pack: PackSpec = PackSpec()
    # Sections of the other jobs; each job refuses a manifest without its section.
    curate: CurateSpec | None = None
    recaption: RecaptionSpec | None = None
    train: TrainSpec | None = None

    @model_validator(mode="after")
    def _budgets(self) -> Manifest:
        pack = self.resolved_pack()
        if pack.min_pixels > pack.max_pixels:
            raise ValueError(
                f"pack.min_pixels {pack.min_pixels} > pack.max_pixels {pack.max_pixels}"
            )
        need = pack.max_pixels // 1024
        if pack.buckets[-1].max_image_tokens < need:
            raise ValueError(
                f"the last bucket ({pack.buckets[-1].name}, max_image_tokens "
                f"{pack.buckets[-1].max_image_tokens}) must cover max_pixels {pack.max_pixels} "
                f"= {need} image tokens"
            )
        return self

    def resolved_pack(self) -> PackSpec:
        """``pack`` with the stage defaults filled in."""
        lo, hi = STAGE_PIXELS[self.stage]
        seq_len = self.pack.seq_len or STAGE_SEQ_LEN[self.stage]
        return self.pack.model_copy(
            update={
                "seq_len": seq_len,
                "max_image_tokens": self.pack.max_image_tokens or seq_len,
                "min_pixels": self.pack.min_pixels or lo,
                "max_pixels": self.pack.max_pixels or hi,
            }
        )

    def resolved(self) -> dict[str, Any]:
        """Every value, defaults and stage defaults filled in, as JSON-able data."""
        return self.model_copy(update={"pack": self.resolved_pack()}).model_dump(mode="json")

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved manifest (recorded in shard indexes)."""
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()
