"""The ``recaption:`` section of a manifest: which samples get a new caption, from which model,
and how the new caption relates to the original in what is packed later.

Example (``manifests/recaption_example.yaml``)::

    recaption:
      input: [s3://bucket/curated/]          # curated Parquet files, directories or globs
      output: s3://bucket/recaptioned        # <output>/samples/*.parquet + report.json
      backend: transformers                  # transformers | vllm | openai | neo
      model: Qwen/Qwen2.5-VL-3B-Instruct     # hub id or local directory (openai: served name)
      prompt: Describe this image in detail.
      generation: {max_new_tokens: 128, temperature: 0.0}
      policy: keep_both                      # replace | keep_both | mix
      num_gpus: 1                            # per actor
      batch_size: 16                         # images per generate call
      pool_size: 4                           # actors

Policies and the packer (``pack.caption_choice``, :meth:`neo_data.encoding.encode.SampleEncoder.choose_caption`):

* ``replace``: the new caption goes **first** and replaces earlier recaptions; the originals stay
  after it (kept for lineage). Packed with ``caption_choice`` ``first`` or ``recaption``.
* ``keep_both``: the originals stay first, the new caption is appended; any ``caption_choice``
  then selects (``first``/``original`` = original, ``recaption`` = the newest recaption).
* ``mix``: stored like ``keep_both``; the packer draws per sample with its seeded
  ``pack.recaption_ratio`` (``caption_choice: mix``), so the ratio lives in one place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from neo_data.encoding.images import MAX_DECODE_PIXELS
from neo_data.manifest.base import Strict

Backend = Literal["transformers", "vllm", "openai", "neo"]
Policy = Literal["replace", "keep_both", "mix"]

# pack.caption_choice values that pack what each policy means (checked by the job).
POLICY_CAPTION_CHOICES: dict[str, tuple[str, ...]] = {
    "replace": ("first", "recaption"),
    "keep_both": ("first", "original", "recaption", "mix"),
    "mix": ("mix",),
}


class GenerationSpec(Strict):
    """Decoding settings; recorded (as JSON) in every new caption's provenance."""

    max_new_tokens: Annotated[int, Field(gt=0, le=8192)] = 128
    temperature: Annotated[float, Field(ge=0.0)] = 0.0  # 0: greedy
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    top_k: Annotated[int | None, Field(gt=0)] = None
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


class OpenAISpec(Strict):
    """An OpenAI-compatible chat-completions endpoint (a vLLM server, ``neo serve``, ...)."""

    endpoint: Annotated[str, Field(pattern=r"^https?://")]  # base URL, e.g. http://host:8000/v1
    # NAME of the environment variable holding the API key (never the key itself; never logged).
    api_key_env: Annotated[str | None, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = None
    max_concurrency: Annotated[int, Field(gt=0, le=1024)] = 16  # requests in flight per actor
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5  # 429 / 5xx / connection errors
    timeout_s: Annotated[float, Field(gt=0)] = 120.0


class RecaptionSpec(Strict):
    """Curated samples in, the same samples out with a new caption beside the original."""

    input: list[str] = Field(min_length=1)  # files, directories or globs; local or s3://
    output: str  # directory: samples/, failures/, report.json, _work/
    backend: Backend
    model: str  # hub id or local directory; for openai, the model name the endpoint serves
    openai: OpenAISpec | None = None  # required with backend: openai
    tokenizer: str = "builtin:qwen3"  # backend neo only
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # local backends
    prompt: Annotated[str, Field(min_length=1)] = "Describe this image in detail."
    generation: GenerationSpec = GenerationSpec()
    policy: Policy = "keep_both"
    sources: list[str] | None = None  # only samples of these sources (default: every source)
    # Only `caption` samples carry captions (CURATED_SCHEMA); other kinds pass through unchanged.
    max_decode_pixels: Annotated[int, Field(gt=0)] = MAX_DECODE_PIXELS
    num_gpus: Annotated[float | None, Field(ge=0)] = None  # per actor; default 1, openai 0
    num_cpus: Annotated[float, Field(gt=0)] = 1.0  # per actor
    batch_size: Annotated[int, Field(gt=0)] = 16
    pool_size: Annotated[int, Field(gt=0)] = 1

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _backend_settings(self) -> RecaptionSpec:
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend openai needs an `openai:` section with at least `endpoint`")
        if self.backend != "openai" and self.openai is not None:
            raise ValueError(f"`openai:` settings given but backend is {self.backend}")
        return self

    @property
    def gpus_per_actor(self) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        return 0.0 if self.backend == "openai" else 1.0

    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()

    def work_hash(self) -> str:
        """What makes two runs produce the same captions (resuming is refused across changes)."""
        keep = self.model_dump(
            mode="json", include={"backend", "model", "prompt", "generation", "policy", "sources"}
        )
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def check_policy(spec: RecaptionSpec, caption_choice: str) -> None:
    """Raise ``ValueError`` when ``pack.caption_choice`` would not pack what the policy means."""
    allowed = POLICY_CAPTION_CHOICES[spec.policy]
    if caption_choice not in allowed:
        raise ValueError(
            f"recaption.policy {spec.policy} is packed with pack.caption_choice "
            f"{' or '.join(allowed)}, but the manifest has {caption_choice!r}"
            + (
                " (set pack.caption_choice: mix and pack.recaption_ratio)"
                if spec.policy == "mix"
                else ""
            )
        )
