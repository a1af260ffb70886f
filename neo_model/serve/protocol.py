"""An OpenAI-compatible chat-completions server for a NEO checkpoint (``neo serve``).

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``. A request is
turned into a prompt exactly like ``neo chat`` does (:mod:`neo_model.prompting`): each
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

One model, one batch at a time: requests that arrive while a batch generates are queued, and the
next batch takes up to ``max_batch_size`` of them that sample alike (greedy requests always
batch; sampled ones batch when temperature, top_k and seed match, so a sampled answer may depend
on its batch). Each row stops at its own ``max_tokens`` or stop. This is batching per round,
not continuous batching: a request waits for the running batch to end. Generation runs in a
worker thread, so the server keeps answering ``/health`` and rejecting bad requests meanwhile.
``stream: true`` is answered in the server-sent-events format of the API (a role chunk, a
content chunk per generated token as it comes -- text that may still turn into a stop string
or is half a UTF-8 character waits --, a final chunk with ``finish_reason`` and usage,
``[DONE]``). A streaming client that disconnects is dropped; a batch whose clients have all
gone stops generating.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from neo_data.encoding.images import ImageRejected, open_image, smart_resize
from neo_data.encoding.tokens import NeoTokenizer, TemplateError
from neo_model.generate import Prompt, SamplingParams, generate_steps
from neo_model.model import NeoChatModel
from neo_model.prompting import MAX_DECODE_PIXELS, build_prompt

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
# Request -> prompt -> answer
# ---------------------------------------------------------------------------------------------


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
            image = decode_data_url(part.image_url.url, MAX_DECODE_PIXELS, f"{param}.image_url")
            try:
                smart_resize(image.height, image.width, settings.min_pixels, settings.max_pixels)
            except ImageRejected as e:
                raise BadRequest(f"{e.reason}: {e.detail}", f"{param}.image_url") from e
            images.append(image)
            pieces.append(f"{PLACEHOLDER}\n")
        turns.append((msg.role, "".join(pieces)))
    return turns, images


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


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that may still become a stop string (not sent yet)."""
    return max(
        (
            k
            for s in stops
            for k in range(min(len(s) - 1, len(text)), 0, -1)
            if text.endswith(s[:k])
        ),
        default=0,
    )


class _Job:
    """One request inside a batch: its prompt, limits, the ids it got so far, and the queue its
    handler reads :class:`Delta` events from (filled from the generation thread)."""

    def __init__(self, prompt: Prompt, params: SamplingParams, stops: list[str], tok, loop):
        self.prompt, self.params, self.stops, self.tok, self.loop = prompt, params, stops, tok, loop
        self.queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        self.ids: list[int] = []
        self.sent = ""  # text already streamed
        self.finished = False
        self.cancelled = False  # the client went away: stop generating for it

    def batch_key(self) -> tuple:
        """Requests batch together when they sample alike (greedy requests always do)."""
        p = self.params
        return ("greedy",) if p.temperature <= 0 else (p.temperature, p.top_k, p.seed)

    def _put(self, item: Delta | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def add(self, token: int | None) -> None:
        """The row's next token (``None``: it stopped). Streams the text that can no longer
        change (a possible stop-string prefix and an incomplete UTF-8 character wait)."""
        if token is None:
            return self.finish("stop")
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in self.stops if s and s in text), default=-1)
        if cut >= 0:
            return self.finish("stop", text[:cut])
        if len(self.ids) >= self.params.max_new_tokens:
            return self.finish("length", text)
        safe = text[: len(text) - _held_back(text, self.stops)].rstrip("\ufffd")
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            self._put(Delta(safe[len(self.sent) :]))
            self.sent = safe
        return None

    def finish(self, reason: str, text: str | None = None) -> None:
        if self.finished:
            return
        if text is None:
            text = self.tok.decode(self.ids, skip_special_tokens=True)
        self.finished = True
        rest = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self._put(Delta(rest, reason, len(self.prompt.input_ids), len(self.ids)))

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self._put(error)


class Engine:
    """The model, its tokenizer and a batching loop: requests that arrive while a batch is
    generating wait, and the next batch takes up to ``max_batch_size`` of them that sample
    alike (oldest first). Generation runs in a worker thread, one batch at a time, so the
    server keeps answering ``/health`` and rejecting bad requests meanwhile."""

    def __init__(self, model: NeoChatModel, tok: NeoTokenizer, settings: ServeSettings):
        self.model, self.tok, self.settings = model, tok, settings
        self.pending: list[_Job] = []
        self.wakeup: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}  # shown by /health

    def prompt(self, req: ChatRequest) -> Prompt:
        turns, images = request_turns(req, self.settings)
        s = self.settings
        try:
            ids, _, pixels = build_prompt(
                self.tok, turns, images, s.min_pixels, s.max_pixels, placeholder=PLACEHOLDER
            )
        except TemplateError as e:
            raise BadRequest(str(e), "messages") from e
        if len(ids) > s.max_prompt_tokens:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens, above this server's limit of "
                f"{s.max_prompt_tokens}",
                "messages",
            )
        return Prompt(ids, pixels)

    def submit(self, req: ChatRequest) -> _Job:
        """Validate ``req`` (a :class:`BadRequest` names what is wrong) and queue it."""
        params = sampling(req, self.settings)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        job = _Job(self.prompt(req), params, stops, self.tok, asyncio.get_running_loop())
        if self.worker is None or self.worker.done():
            self.wakeup = asyncio.Event()
            self.worker = asyncio.create_task(self._serve())
        self.pending.append(job)
        self.wakeup.set()
        return job

    async def events(self, job: _Job) -> AsyncIterator[Delta]:
        """``job``'s deltas up to and including the last one (which has ``finish_reason``)."""
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True

    async def answer(self, req: ChatRequest) -> Answer:
        job = self.submit(req)
        parts, last = [], None
        async for delta in self.events(job):
            parts.append(delta.text)
            last = delta
        return Answer(
            "".join(parts), last.prompt_tokens, last.completion_tokens, last.finish_reason
        )

    async def _serve(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                key = self.pending[0].batch_key()
                batch = [j for j in self.pending if j.batch_key() == key]
                batch = batch[: self.settings.max_batch_size]
                self.pending = [j for j in self.pending if j not in batch]
                self.stats["requests"] += len(batch)
                self.stats["batches"] += 1
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                await asyncio.to_thread(self._generate, batch)

    def _generate(self, batch: list[_Job]) -> None:
        """One batch, in the worker thread; each row stops at its own ``max_tokens``."""
        limit = max(j.params.max_new_tokens for j in batch)
        params = replace(batch[0].params, max_new_tokens=limit)
        try:
            steps = generate_steps(self.model, [j.prompt for j in batch], params)
            for tokens in steps:
                for job, token in zip(batch, tokens, strict=True):
                    if not job.finished:
                        job.add(token)
                if all(j.finished or j.cancelled for j in batch):
                    steps.close()
                    break
            for job in batch:
                job.finish("length")
        except Exception as e:  # noqa: BLE001 -- every waiting request hears of it
            for job in batch:
                job.fail(e)


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def error_body(message: str, status: int, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def create_app(model: NeoChatModel, tok: NeoTokenizer, settings: ServeSettings) -> FastAPI:
    engine = Engine(model, tok, settings)
    app = FastAPI(title="neo serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.status, e.param), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), e.status_code), status_code=e.status_code)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "queued": len(engine.pending), **engine.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": settings.served_model_name, "object": "model", "owned_by": "neo"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_request(await read_body(request, settings.max_request_bytes))
        if req.model is not None and req.model != settings.served_model_name:
            raise BadRequest(
                f"model {req.model!r} is not served here (this server serves "
                f"{settings.served_model_name!r})",
                "model",
                status=404,
            )
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            job = engine.submit(req)
            return StreamingResponse(
                sse_chunks(engine.events(job), cid, created, settings.served_model_name),
                media_type="text/event-stream",
            )
        answer = await engine.answer(req)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": settings.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": usage(answer),
        }

    return app


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


def usage(answer: Answer | Delta) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


async def sse_chunks(
    deltas: AsyncGenerator[Delta, None], cid: str, created: int, model: str
) -> AsyncIterator[bytes]:
    """The API's server-sent events: a role chunk, a content chunk per delta as the tokens come,
    a final chunk with ``finish_reason`` and usage, ``[DONE]``."""

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for d in deltas:
            if d.text:
                yield chunk({"content": d.text})
            if d.finish_reason is not None:
                yield chunk({}, d.finish_reason, usage=usage(d))
    except Exception as e:  # noqa: BLE001 -- headers are sent: the error goes in the stream
        yield f"data: {json.dumps(error_body(f'generation failed: {e}', 500))}\n\n".encode()
    finally:
        await deltas.aclose()  # a client gone mid-stream: its job is marked cancelled
    yield b"data: [DONE]\n\n"
