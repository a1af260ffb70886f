"""Captioning backends behind one interface: images in, one caption (or a recorded failure) out.

=============== =====================================================================
backend         what runs
=============== =====================================================================
``transformers`` any ``AutoModelForImageTextToText`` + ``AutoProcessor`` (hub id or local
                directory), batched ``generate`` with left padding
``vllm``         ``vllm.LLM.chat`` (optional dependency, imported only by this backend;
                :mod:`neo_data.recaption.chat`)
``openai``       any OpenAI-compatible chat-completions endpoint (a vLLM server, ``neo
                serve``); images as data URLs; a concurrency limit, timeouts, and retries
                with exponential backoff on 429 / 5xx / connection errors (the official
                ``openai`` client's retry policy; :mod:`neo_data.recaption.chat`)
``neo``          a NEO checkpoint from our trainer (:class:`neo_model.captioner.NeoCaptioner`:
                :mod:`neo_model.generate`, prompts built by :mod:`neo_model.prompting`
                exactly like ``neo chat``)
=============== =====================================================================

A sample's images are decoded first (:func:`neo_data.encoding.images.open_image`: upright RGB, the
decompression-bomb cap); a row whose image does not decode, or whose generation fails or comes
back empty, gets a :class:`Caption` with a stable snake_case ``reason`` and the rest of the
batch goes on:

======================== ===========================================================
reason                   when
======================== ===========================================================
``image_decode_error``   image bytes do not decode (also ``image_empty``,
                         ``image_too_many_pixels``, ``aspect_ratio_too_extreme``)
``generation_error``     the model raised on this sample (retried alone after a batch
                         failure, so one bad sample never fails its neighbours)
``empty_generation``     the model produced only whitespace
``endpoint_error``       the endpoint answered an error status after the retries
``endpoint_unreachable`` connection errors or timeouts after the retries
======================== ===========================================================
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from neo_data.encoding.images import ImageRejected, open_image
from neo_data.manifest.recaption import GenerationSpec, RecaptionSpec

log = logging.getLogger(__name__)

# Errors a model raises on bad inputs or resources (CUDA OOM is a RuntimeError): recorded on the
# row. Programming errors (TypeError, AttributeError, ...) still raise.
GENERATION_ERRORS = (RuntimeError, ValueError, IndexError)


class CaptionerUnavailable(RuntimeError):
    """A backend cannot start here (missing optional package, missing API key, ...)."""


@dataclass(frozen=True)
class Caption:
    """The outcome for one sample: ``text``, or ``reason`` + ``detail`` when it failed."""

    text: str | None
    reason: str | None = None
    detail: str = ""

    @classmethod
    def failed(cls, reason: str, detail: str) -> Caption:
        return cls(None, reason, detail[:2000])


class Captioner(ABC):
    """One model, one prompt, one set of generation settings; ``caption`` maps a batch.

    Subclasses implement ``prepare`` (one sample's encoded images -> what ``run`` takes; may
    raise :class:`~neo_data.encoding.images.ImageRejected`) and ``run`` (a batch of prepared
    samples -> one text or :class:`Caption` each), and name their own settings in
    ``spec_options``."""

    backend: str = ""

    def __init__(self, model: str, prompt: str, generation: GenerationSpec, max_decode_pixels: int):
        self.model_name = model
        self.prompt = prompt
        self.generation = generation
        self.max_decode_pixels = max_decode_pixels

    @classmethod
    def from_spec(cls, spec: RecaptionSpec) -> Captioner:
        """This backend built from a ``recaption:`` section, loaded and ready."""
        common = (spec.model, spec.prompt, spec.generation, spec.max_decode_pixels)
        return cls(*common, **cls.spec_options(spec))

    @classmethod
    def spec_options(cls, spec: RecaptionSpec) -> dict[str, Any]:
        """The keyword arguments of this backend's ``__init__`` beyond the common four."""
        return {}

    def caption(self, samples: Sequence[Sequence[bytes]]) -> list[Caption]:
        """One :class:`Caption` per sample (its encoded images, usually one), in order."""
        out: list[Caption | None] = [None] * len(samples)
        ready: list[tuple[int, Any]] = []
        for i, images in enumerate(samples):
            try:
                ready.append((i, self.prepare(images)))
            except ImageRejected as e:
                out[i] = Caption.failed(e.reason, e.detail)
        for (i, _), result in zip(ready, self._run_isolated([p for _, p in ready]), strict=True):
            out[i] = result
        return [c for c in out if c is not None]

    def decode(self, data: bytes) -> Image.Image:
        return open_image(data, self.max_decode_pixels)

    @abstractmethod
    def prepare(self, images: Sequence[bytes]) -> Any: ...

    @abstractmethod
    def run(self, prepared: list[Any]) -> list[str | Caption]: ...

    def _run_isolated(self, prepared: list[Any]) -> list[Caption]:
        """``run`` on the batch; if it raises, each sample alone, so a failure stays on its row."""
        if not prepared:
            return []
        try:
            results = self.run(prepared)
        except GENERATION_ERRORS as e:
            if len(prepared) == 1:
                return [Caption.failed("generation_error", f"{type(e).__name__}: {e}")]
            log.warning("batch of %d failed (%s); retrying one by one", len(prepared), e)
            return [c for p in prepared for c in self._run_isolated([p])]
        return [_as_caption(r) for r in results]


def _as_caption(result: str | Caption) -> Caption:
    if isinstance(result, Caption):
        return result
    text = result.strip()
    if not text:
        return Caption.failed("empty_generation", "the model produced only whitespace")
    return Caption(text)


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------


def torch_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class TransformersCaptioner(Captioner):
    """``AutoModelForImageTextToText`` + ``AutoProcessor``; the prompt is rendered once with the
    processor's chat template (one ``{"type": "image"}`` part per image, then the text)."""

    backend = "transformers"

    def __init__(
        self,
        model: str,
        prompt: str,
        generation: GenerationSpec,
        max_decode_pixels: int,
        dtype: str = "auto",
        device: str | None = None,
    ):
        super().__init__(model, prompt, generation, max_decode_pixels)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch_device(device)
        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batched generation
        self.model = (
            AutoModelForImageTextToText.from_pretrained(
                model, dtype=_torch_dtype(dtype, self.device)
            )
            .to(self.device)
            .eval()
        )
        self._templates: dict[int, str] = {}

    @classmethod
    def spec_options(cls, spec: RecaptionSpec) -> dict[str, Any]:
        return {"dtype": spec.dtype}

    def template(self, num_images: int) -> str:
        if num_images not in self._templates:
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": self.prompt}]
            self._templates[num_images] = self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        return self._templates[num_images]

    def prepare(self, images: Sequence[bytes]) -> list[Image.Image]:
        return [self.decode(data) for data in images]

    def run(self, prepared: list[list[Image.Image]]) -> list[str]:
        import torch

        texts = [self.template(len(images)) for images in prepared]
        flat = [img for images in prepared for img in images]
        inputs = self.processor(text=texts, images=flat, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        g = self.generation
        kwargs: dict[str, Any] = {
            "max_new_tokens": g.max_new_tokens,
            "do_sample": g.temperature > 0,
        }
        if g.temperature > 0:
            kwargs.update(temperature=g.temperature, top_p=g.top_p or 1.0, top_k=g.top_k or 0)
        torch.manual_seed(g.seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------

# Backend name (``recaption.backend``) -> its class, or ``"module:Class"`` for one imported only
# when chosen: the chat backends build on this module, and the neo backend lives in neo_model,
# which neo_data never imports.
BACKENDS: dict[str, type[Captioner] | str] = {
    "transformers": TransformersCaptioner,
    "vllm": "neo_data.recaption.chat:VLLMCaptioner",
    "openai": "neo_data.recaption.chat:OpenAICaptioner",
    "neo": "neo_model.captioner:NeoCaptioner",
}


def backend_class(name: str) -> type[Captioner]:
    """The :class:`Captioner` subclass registered as ``name``, imported if named by a string."""
    if name not in BACKENDS:
        raise ValueError(f"unknown recaption backend {name!r}; known: {', '.join(BACKENDS)}")
    entry = BACKENDS[name]
    if not isinstance(entry, str):
        return entry
    module, _, attr = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise CaptionerUnavailable(
            f"backend {name} needs {module}, which does not import: {e}"
        ) from e


def make_captioner(spec: RecaptionSpec) -> Captioner:
    """The backend ``spec`` names, loaded and ready (called in each actor's ``__init__``)."""
    return backend_class(spec.backend).from_spec(spec)
