"""Manifests: the YAML files users edit, validated at the boundary with pydantic.

Errors name the file, the line, the YAML path and the bad value, and say what is allowed::

    manifests/demo.yaml:14: pack.buckets[1].max_image_tokens: -3 -- Input should be greater than 0

Unknown keys are rejected (a typo never silently falls back to a default). YAML is loaded with
``yaml.safe_load`` semantics only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import fsspec
import yaml
from pydantic import Field, ValidationError, model_validator

from neo_data.curate_spec import CurateSpec
from neo_data.images import ImageEncoding
from neo_data.recaption_spec import RecaptionSpec
from neo_data.spec_base import Strict as _Strict
from neo_data.train_spec import TrainSpec

Stage = Literal["pretrain", "midtrain", "sft"]

# Pixel budgets per stage (architecture doc, section 5).
STAGE_PIXELS: dict[str, tuple[int, int]] = {
    "pretrain": (256 * 256, 2048 * 2048),
    "midtrain": (256 * 256, 4096 * 4096),
    "sft": (256 * 256, 4096 * 4096),
}
STAGE_SEQ_LEN = {"pretrain": 16_384, "midtrain": 32_768, "sft": 32_768}


class Bucket(_Strict):
    """Samples whose largest image has at most ``max_image_tokens`` tokens (32x32 px each)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    max_image_tokens: Annotated[int, Field(gt=0)]


class ImageEncodingSpec(_Strict):
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: Annotated[int, Field(ge=1, le=100)] = 95
    subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] = "4:4:4"  # JPEG chroma

    def to_encoding(self) -> ImageEncoding:
        return ImageEncoding(self.format, self.quality, self.subsampling)


class PackSpec(_Strict):
    """How curated samples become packs."""

    tokenizer: str = "builtin:qwen3"
    seq_len: Annotated[int | None, Field(gt=0)] = None  # default by stage
    max_image_tokens: Annotated[int | None, Field(gt=0)] = None  # per pack; default seq_len
    min_pixels: Annotated[int | None, Field(gt=0)] = None  # default by stage
    max_pixels: Annotated[int | None, Field(gt=0)] = None
    max_decode_pixels: Annotated[int, Field(gt=0)] = 178_956_970  # Pillow's bomb limit x2
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
        return self


class DataSpec(_Strict):
    curated: list[str] = Field(min_length=1)  # files, directories or globs; local or s3://
    packed: str  # output directory of the packed dataset


class Manifest(_Strict):
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

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved manifest (recorded in shard indexes)."""
        canon = self.model_copy(update={"pack": self.resolved_pack()}).model_dump(mode="json")
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


class ManifestError(ValueError):
    """A manifest is not valid; the message lists every problem with file, line and path."""


def load_manifest(path: str | Path, overrides: dict[str, Any] | None = None) -> Manifest:
    """Read, parse and validate a manifest (local path or any fsspec URL)."""
    path = str(path)
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: no such manifest") from e
    return parse_manifest(text, path, overrides)


def parse_manifest(text: str, where: str, overrides: dict[str, Any] | None = None) -> Manifest:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: a manifest is a mapping of keys, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted, value)
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        lines = [_format_error(err, node, where) for err in e.errors()]
        raise ManifestError(f"{where}: {len(lines)} problem(s)\n" + "\n".join(lines)) from None


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value


def _format_error(err: dict, root: yaml.Node | None, where: str) -> str:
    loc = [p for p in err["loc"] if p not in ("function-after",)]
    path = ""
    for p in loc:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    line = _line_of(root, loc)
    value = err.get("input")
    shown = "" if isinstance(value, dict | list) else f"{value!r} -- "
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; `neo manifest schema` lists the keys)"
    at = f"{where}:{line}" if line else where
    return f"  {at}: {path or '(top level)'}: {shown}{msg}"


def _line_of(node: yaml.Node | None, loc: list) -> int | None:
    """1-based line of the deepest YAML node that exists along ``loc``."""
    best = node.start_mark.line + 1 if node is not None else None
    for p in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == p), None)
            if nxt is None:
                key = next((k for k, _ in node.value if k.value == p), None)
                return key.start_mark.line + 1 if key is not None else best
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(p, int) and p < len(node.value):
            node = node.value[p]
        else:
            break
        best = node.start_mark.line + 1
    return best
