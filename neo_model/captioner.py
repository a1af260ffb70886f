"""The ``neo`` recaption backend: captions from a NEO checkpoint of our trainer.

It lives here, not beside the other backends in :mod:`neo_data.recaption.captioners`, because it
needs the model: ``neo_data`` never imports ``neo_model``, and the backend registry there names
this class as a string (``"neo_model.captioner:NeoCaptioner"``) imported only when a manifest
chooses ``backend: neo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neo_data.encoding.images import smart_resize
from neo_data.encoding.tokens import load_tokenizer, user_content
from neo_data.manifest.recaption import GenerationSpec, RecaptionSpec
from neo_data.recaption.captioners import Captioner, torch_device
from neo_model.generate import Prompt, SamplingParams, generate
from neo_model.prompting import build_prompt, pixel_budget
from neo_model.weights import load_for_inference


class NeoCaptioner(Captioner):
    """A NEO checkpoint: prompts like ``neo chat`` (user turn ``<image>\\n`` per image + the
    prompt), batched :func:`neo_model.generate.generate`."""

    backend = "neo"

    def __init__(
        self,
        model: str,
        prompt: str,
        generation: GenerationSpec,
        max_decode_pixels: int,
        tokenizer: str = "builtin:qwen3",
        device: str | None = None,
    ):
        super().__init__(model, prompt, generation, max_decode_pixels)
        if generation.top_p is not None:
            raise ValueError(
                "backend neo samples with temperature and top_k; top_p is not supported"
            )
        self.device = torch_device(device)
        self.model, vision = load_for_inference(model, self.device)
        self.min_pixels, self.max_pixels = pixel_budget(self.model, vision)
        self.tok = load_tokenizer(tokenizer)
        self.params = SamplingParams(
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            top_k=generation.top_k,
            seed=generation.seed,
        )

    @classmethod
    def spec_options(cls, spec: RecaptionSpec) -> dict[str, Any]:
        return {"tokenizer": spec.tokenizer}

    def prepare(self, images: Sequence[bytes]) -> Prompt:
        decoded = [self.decode(data) for data in images]
        for img in decoded:  # reject now (aspect ratio ...) rather than fail the batch later
            smart_resize(img.height, img.width, self.min_pixels, self.max_pixels)
        turns = [("user", user_content(self.prompt, len(decoded)))]
        ids, _, pixels = build_prompt(self.tok, turns, decoded, self.min_pixels, self.max_pixels)
        return Prompt(ids, pixels)

    def run(self, prepared: list[Prompt]) -> list[str]:
        out = generate(self.model, prepared, self.params)
        return [self.tok.decode(ids, skip_special_tokens=True) for ids in out]
