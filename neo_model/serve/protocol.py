"""The OpenAI chat-completions protocol of ``neo serve``: request models, their parsing and
validation into a prompt and sampling parameters, and the pieces of an answer (usage, errors).

A request is turned into a prompt exactly like ``neo chat`` does (:mod:`neo_model.prompting`): each
``image_url`` part becomes an image placeholder at its place in the message, text parts follow
in order (images first then text gives the training layout ``<image>\\n...<image>\\nquestion``).

Limits and errors (OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``):

* 413 when the body exceeds ``max_request_bytes`` (checked on ``Content-Length`` and while
  reading a chunked body);
* 400 for malformed JSON, unknown roles, bad content parts, ``n`` > 1, ``top_p`` != 1 (not
  supported by NEO's sampler), too many images, images that do not decode or have an extreme
  aspect ratio, prompts over ``max_prompt_tokens``, ``max_tokens`` over the cap;
* images must be ``data:`` URLs: the server never fetches remote URLs (no request forgery from
  inside a cluster);
* 404 for an unknown route or a ``model`` other than the served name.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neo_data.encoding.images import ImageRejected, open_image, smart_resize
from neo_data.encoding.tokens import NeoTokenizer, TemplateError
from neo_model.generate import Prompt, SamplingParams
from neo_model.prompting import build_prompt

# Stands for an image inside message text; no client text can contain it (a private-use
# character pair), so a literal "<image>" typed by a user stays text.
PLACEHOLDER = "\ue000image\ue000"


@dataclass(frozen=True)
class ServeSettings:
    served_model_name: str
    min_pixels: int
    max_pixels: int
    max_request_bytes: int = 32 << 20
    max_images: int = 16
    max_prompt_tokens: int = 32_768
    max_new_tokens: int = 4096  # cap on a request's max_tokens
    default_max_tokens: int = 512
    max_batch_size: int = 8  # requests generated together
    # Decode cap of request images; 0: four times max_pixels, at least 4096 x 4096 px (an image
    # a little above the budget is resized, a bigger one refused before it is decoded).
    max_decode_pixels: int = 0

    @property
    def decode_cap(self) -> int:
        return self.max_decode_pixels or max(4 * self.max_pixels, 4096 * 4096)


class BadRequest(Exception):
    """A 4xx answer: the message names the field (``param``) that is wrong."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


# ---------------------------------------------------------------------------------------------
# The request body (fields clients commonly send are accepted; unknown ones ignored, as
# OpenAI-compatible servers do)
# ---------------------------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str


class ContentPart(_Lenient):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(_Lenient):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Lenient):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: Annotated[int | None, Field(gt=0)] = None
    max_completion_tokens: Annotated[int | None, Field(gt=0)] = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0  # greedy unless asked
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    top_k: Annotated[int | None, Field(gt=0)] = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    stream: bool = False


# ---------------------------------------------------------------------------------------------
# Request -> prompt and sampling
# ---------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one above ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(
            f"request body of {declared} bytes is above the limit of {limit}", None, 413
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is above the limit of {limit} bytes", None, 413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function"))
        extra = f" ({len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise BadRequest(f"{param}: {err['msg']}{extra}", param or None) from e


def decode_data_url(url: str, max_decode_pixels: int, param: str) -> Image.Image:
    """A ``data:image/...;base64,`` URL -> upright RGB image, or :class:`BadRequest`."""
    if not url.startswith("data:"):
        raise BadRequest(
            "only data: URLs are accepted for images (the server does not fetch remote URLs)",
            param,
        )
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64") or not head[5:].startswith("image/"):
        raise BadRequest("expected data:image/<type>;base64,<data>", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"image data is not valid base64 ({e})", param) from e
    try:
        return open_image(data, max_decode_pixels)
    except ImageRejected as e:
        raise BadRequest(f"{e.reason}: {e.detail}", param) from e


def request_turns(
    req: ChatRequest, settings: ServeSettings
) -> tuple[list[tuple[str, str]], list[Image.Image]]:
    """``(role, content)`` turns with :data:`PLACEHOLDER` per image, and the decoded images."""
    turns: list[tuple[str, str]] = []
    images: list[Image.Image] = []
    for i, msg in enumerate(req.messages):
        if msg.content is None or isinstance(msg.content, str):
            turns.append((msg.role, msg.content or ""))
            continue
        pieces = []
        for j, part in enumerate(msg.content):
            param = f"messages[{i}].content[{j}]"
            if part.type == "text":
                if part.text is None:
                    raise BadRequest("a text part needs `text`", param)
                pieces.append(part.text)
                continue
            if part.image_url is None:
                raise BadRequest("an image_url part needs `image_url.url`", param)
            if msg.role == "assistant":
                raise BadRequest("assistant messages cannot contain images", param)
            if len(images) >= settings.max_images:
                raise BadRequest(f"more than {settings.max_images} images in one request", param)
            image = decode_data_url(part.image_url.url, settings.decode_cap, f"{param}.image_url")
            try:
                smart_resize(image.height, image.width, settings.min_pixels, settings.max_pixels)
            except ImageRejected as e:
                raise BadRequest(f"{e.reason}: {e.detail}", f"{param}.image_url") from e
            images.append(image)
            pieces.append(f"{PLACEHOLDER}\n")
        turns.append((msg.role, "".join(pieces)))
    return turns, images


def request_prompt(req: ChatRequest, tok: NeoTokenizer, settings: ServeSettings) -> Prompt:
    """The prompt of ``req``, built like ``neo chat`` builds one; :class:`BadRequest` names what
    is wrong (a template error, a prompt over ``max_prompt_tokens``)."""
    turns, images = request_turns(req, settings)
    s = settings
    try:
        ids, _, pixels = build_prompt(
            tok, turns, images, s.min_pixels, s.max_pixels, placeholder=PLACEHOLDER
        )
    except TemplateError as e:
        raise BadRequest(str(e), "messages") from e
    if len(ids) > s.max_prompt_tokens:
        raise BadRequest(
            f"the prompt has {len(ids)} tokens, above this server's limit of {s.max_prompt_tokens}",
            "messages",
        )
    return Prompt(ids, pixels)


def sampling(req: ChatRequest, settings: ServeSettings) -> SamplingParams:
    if req.n != 1:
        raise BadRequest("only n = 1 is supported", "n")
    if req.top_p is not None and req.top_p < 1.0:
        raise BadRequest("top_p is not supported by NEO's sampler; use top_k", "top_p")
    max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_new_tokens:
        raise BadRequest(
            f"max_tokens {max_tokens} is above this server's cap of {settings.max_new_tokens}",
            "max_tokens",
        )
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=req.temperature,
        top_k=req.top_k,
        seed=req.seed if req.seed is not None else 0,
    )


# ---------------------------------------------------------------------------------------------
# The answer
# ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


@dataclass(frozen=True)
class Delta:
    """One event of a request's stream: new text, and at the end the finish reason and usage."""

    text: str
    finish_reason: str | None = None  # set on the last event only
    prompt_tokens: int = 0
    completion_tokens: int = 0


def usage(answer: Answer | Delta) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def error_body(message: str, status: int, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
