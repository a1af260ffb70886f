"""The backends fed chat messages with the images as data URLs: ``openai`` (any
OpenAI-compatible chat-completions endpoint) and ``vllm`` (``vllm.LLM.chat`` in the actor's
process). Both are registered in :data:`neo_data.recaption.captioners.BACKENDS`."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image

from neo_data.manifest.recaption import GenerationSpec, OpenAISpec, RecaptionSpec
from neo_data.recaption.captioners import Caption, Captioner, CaptionerUnavailable

DATA_URL_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


def data_url(data: bytes, image: Image.Image) -> str:
    """``data:<mime>;base64,...`` of the original bytes when they are JPEG/PNG/WebP and upright,
    else of a PNG of the decoded upright RGB image (what every endpoint accepts)."""
    with Image.open(io.BytesIO(data)) as src:
        fmt = src.format
        upright = src.getexif().get(0x0112, 1) == 1  # EXIF orientation "normal"
    if fmt in DATA_URL_FORMATS and upright:
        mime, payload = DATA_URL_FORMATS[fmt], data
    else:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        mime, payload = "image/png", buf.getvalue()
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def chat_messages(prompt: str, urls: Sequence[str]) -> list[dict]:
    content: list[dict] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


class _DataURLCaptioner(Captioner):
    def prepare(self, images: Sequence[bytes]) -> list[str]:
        return [data_url(data, self.decode(data)) for data in images]


# ---------------------------------------------------------------------------------------------
# openai
# ---------------------------------------------------------------------------------------------


class OpenAICaptioner(_DataURLCaptioner):
    """Chat completions against ``settings.endpoint``, at most ``max_concurrency`` in flight.

    The official ``openai`` client carries the retry policy (exponential backoff with jitter,
    ``Retry-After`` honoured, on 408/409/429/5xx and connection errors) and timeouts; the key
    comes from the environment variable named by ``api_key_env`` and is never logged."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        prompt: str,
        generation: GenerationSpec,
        max_decode_pixels: int,
        settings: OpenAISpec,
    ):
        super().__init__(model, prompt, generation, max_decode_pixels)
        try:
            import openai
        except ImportError as e:
            raise CaptionerUnavailable("backend openai needs the `openai` package") from e
        self._openai = openai
        self.settings = settings
        key = "EMPTY"  # local servers (vLLM, neo serve) accept any key
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env, "")
            if not key:
                raise CaptionerUnavailable(
                    f"recaption.openai.api_key_env: environment variable "
                    f"{settings.api_key_env} is not set"
                )
        self._api_key = key

    @classmethod
    def spec_options(cls, spec: RecaptionSpec) -> dict[str, Any]:
        assert spec.openai is not None  # RecaptionSpec validates it
        return {"settings": spec.openai}

    def run(self, prepared: list[list[str]]) -> list[str | Caption]:
        return asyncio.run(self._run_all(prepared))

    async def _run_all(self, prepared: list[list[str]]) -> list[str | Caption]:
        s = self.settings
        limit = asyncio.Semaphore(s.max_concurrency)
        async with self._openai.AsyncOpenAI(
            base_url=s.endpoint,
            api_key=self._api_key,
            max_retries=s.max_retries,
            timeout=s.timeout_s,
        ) as client:
            return await asyncio.gather(*(self._one(client, limit, urls) for urls in prepared))

    async def _one(self, client, limit: asyncio.Semaphore, urls: list[str]) -> str | Caption:
        g = self.generation
        options: dict[str, Any] = {"max_tokens": g.max_new_tokens, "temperature": g.temperature}
        options["seed"] = g.seed
        if g.top_p is not None:
            options["top_p"] = g.top_p
        if g.top_k is not None:
            options["extra_body"] = {"top_k": g.top_k}  # vLLM / neo serve extension
        openai = self._openai
        async with limit:
            try:
                response = await client.chat.completions.create(
                    model=self.model_name, messages=chat_messages(self.prompt, urls), **options
                )
            except openai.APIStatusError as e:
                return Caption.failed("endpoint_error", f"HTTP {e.status_code}: {e.message}")
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                return Caption.failed("endpoint_unreachable", f"{type(e).__name__}: {e}")
        choice = response.choices[0] if response.choices else None
        if choice is None or choice.message.content is None:
            return Caption.failed("endpoint_error", "the response has no message content")
        return choice.message.content


# ---------------------------------------------------------------------------------------------
# vllm
# ---------------------------------------------------------------------------------------------


class VLLMCaptioner(_DataURLCaptioner):
    """``vllm.LLM`` in the actor's process (its own continuous batching inside ``run``)."""

    backend = "vllm"

    def __init__(
        self,
        model: str,
        prompt: str,
        generation: GenerationSpec,
        max_decode_pixels: int,
        dtype: str = "auto",
    ):
        super().__init__(model, prompt, generation, max_decode_pixels)
        try:
            import vllm
        except ImportError as e:
            raise CaptionerUnavailable(
                "backend vllm needs vLLM installed on the workers (pip install vllm); "
                "or serve the model with `vllm serve` and use backend openai"
            ) from e
        g = generation
        self.llm = vllm.LLM(model=model, dtype=dtype, seed=g.seed, limit_mm_per_prompt={"image": 4})
        self.params = vllm.SamplingParams(
            max_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p or 1.0,
            top_k=g.top_k or -1,
            seed=g.seed,
        )

    @classmethod
    def spec_options(cls, spec: RecaptionSpec) -> dict[str, Any]:
        return {"dtype": spec.dtype}

    def run(self, prepared: list[list[str]]) -> list[str]:
        conversations = [chat_messages(self.prompt, urls) for urls in prepared]
        outputs = self.llm.chat(conversations, self.params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]
