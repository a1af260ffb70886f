"""The ``pack:`` section of a manifest: how curated samples become packs of ``seq_len`` tokens.

A few keys are usually enough; every other key has a default, and the manifest's stage fills in
``seq_len``, ``max_image_tokens`` and the pixel budgets (``Manifest.resolved_pack``)::

    pack:
      seq_len: 4096                    # tokens per pack (default by stage)
      max_pixels: 262144               # 512 x 512 px: 256 image tokens at most
      buckets:                         # by the largest image of a sample, in 32 x 32 px tokens
        - {name: low, max_image_tokens: 64}
        - {name: high, max_image_tokens: 256}
      text_ratio: 0.3                  # text : multimodal = 3 : 7, as in the paper

A pack holds images of one bucket, so small-image packs are not padded for big ones; the last
bucket must cover ``max_pixels`` (checked by the manifest, which knows the stage's budgets).

Shards are Parquet by default (object stores: one pack per range request); ``format: arrow``
writes Arrow IPC shards for training from a local disk or shared file system (memory-mapped),
their buffers compressed with ``arrow_compression`` (``neo_data/format/FORMAT.md`` compares
the two).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from neo_data.encoding.images import MAX_DECODE_PIXELS, ImageEncoding
from neo_data.manifest.base import Strict


class Bucket(Strict):
    """Samples whose largest image has at most ``max_image_tokens`` tokens (32x32 px each)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    max_image_tokens: Annotated[int, Field(gt=0)]


class ImageEncodingSpec(Strict):
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: Annotated[int, Field(ge=1, le=100)] = 95
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] = "4:4:4"  # JPEG chroma

    def to_encoding(self) -> ImageEncoding:
        return ImageEncoding(self.format, self.quality, self.subsampling)


class PackSpec(Strict):
    """How curated samples become packs."""

    tokenizer: str = "builtin:qwen3"
    seq_len: Annotated[int | None, Field(gt=0)] = None  # default by stage
    max_image_tokens: Annotated[int | None, Field(gt=0)] = None  # per pack; default seq_len
    min_pixels: Annotated[int | None, Field(gt=0)] = None  # default by stage
    max_pixels: Annotated[int | None, Field(gt=0)] = None
    max_decode_pixels: Annotated[int, Field(gt=0)] = MAX_DECODE_PIXELS
    buckets: list[Bucket] = Field(
        default_factory=lambda: [
            Bucket(name="low", max_image_tokens=256),
            Bucket(name="mid", max_image_tokens=1024),
            Bucket(name="high", max_image_tokens=16384),
        ],
        min_length=1,
    )
    # Fraction of text-only samples among the packed samples (the paper: text:multimodal 3:7).
    text_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    caption_prompt: str = ""  # user text beside the image of a caption sample
    caption_choice: Literal["first", "original", "recaption", "mix"] = "first"
    recaption_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5  # with caption_choice: mix
    image_encoding: ImageEncodingSpec = ImageEncodingSpec()
    format: Literal["parquet", "arrow"] = "parquet"  # of the shards (FORMAT.md: which when)
    # IPC buffer codec with format: arrow (unset: zstd; FORMAT.md has the measured trade-off)
    arrow_compression: Literal["zstd", "lz4", "none"] | None = None
    packs_per_shard: Annotated[int, Field(gt=0)] = 64
    # Samples one worker encodes and packs together (memory: about this many resized images).
    window_samples: Annotated[int, Field(gt=0)] = 8192
    seed: int = 0

    @model_validator(mode="after")
    def _buckets_increase(self) -> PackSpec:
        bounds = [b.max_image_tokens for b in self.buckets]
        if bounds != sorted(set(bounds)):
            raise ValueError(
                f"buckets must have strictly increasing max_image_tokens, got {bounds}"
            )
        names = [b.name for b in self.buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"bucket names must be unique, got {names}")
        if self.arrow_compression is not None and self.format != "arrow":
            raise ValueError(
                f"arrow_compression applies to format: arrow (this pack writes {self.format})"
            )
        return self
