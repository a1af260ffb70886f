"""``neo serve``'s FastAPI app: an OpenAI-compatible chat-completions server for a NEO checkpoint.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``. A request body is
read, parsed and checked by :mod:`neo_model.serve.protocol` (its limits and error answers are
listed there) and answered by the batching :class:`~neo_model.serve.engine.Engine`. Every error,
unknown routes included, gets OpenAI's error body. ``stream: true`` is answered in the
server-sent-events format of the API (a role chunk, a content chunk per delta as the tokens come,
a final chunk with ``finish_reason`` and usage, ``[DONE]``). A streaming client that
disconnects is dropped.

Request images are decoded in a small pool of worker threads (never on the event loop, where
one large image would stall every other request), under a cap near the model's ``max_pixels``
(``ServeSettings.decode_cap``). A server bound to a loopback address answers only requests whose
``Host`` names it (:mod:`neo_data.hostcheck`, shared with the shard browser): a web page cannot
reach it by DNS rebinding.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from neo_data.encoding.tokens import NeoTokenizer
from neo_data.hostcheck import host_allowed
from neo_model.model import NeoChatModel
from neo_model.serve.engine import Engine
from neo_model.serve.protocol import (
    BadRequest,
    Delta,
    ServeSettings,
    error_body,
    parse_request,
    read_body,
    request_prompt,
    usage,
)

DECODE_THREADS = 4  # images decoded at once: bounds the memory of concurrent decodes


def create_app(
    model: NeoChatModel,
    tok: NeoTokenizer,
    settings: ServeSettings,
    allowed_hosts: frozenset[str] = frozenset(),
) -> FastAPI:
    """The app; requests whose ``Host`` is not in ``allowed_hosts`` get 421 (an empty set, for
    a server exposed on purpose, allows any: :func:`neo_data.hostcheck.allowed_hosts`)."""
    engine = Engine(model, tok, settings)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="neo-serve-decode")
    app = FastAPI(title="neo serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def _host(request: Request, call_next):
        host = request.headers.get("host")
        if not host_allowed(host, allowed_hosts):
            return JSONResponse(error_body(f"unexpected Host {host!r}", 421), status_code=421)
        return await call_next(request)

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
        loop = asyncio.get_running_loop()  # decode and tokenize off the event loop
        prompt = await loop.run_in_executor(decoder, request_prompt, req, tok, settings)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            job = engine.submit(req, prompt)
            return StreamingResponse(
                sse_chunks(engine.events(job), cid, created, settings.served_model_name),
                media_type="text/event-stream",
            )
        answer = await engine.answer(req, prompt)
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
