"""The batching engine of ``neo serve``: one model, one batch at a time.

Requests that arrive while a batch generates are queued, and the next batch takes up to
``max_batch_size`` of them that sample alike (greedy requests always batch; sampled ones batch
when temperature, top_k and seed match, so a sampled answer may depend on its batch). Each row
stops at its own ``max_tokens`` or stop. This is batching per round, not continuous batching: a
request waits for the running batch to end. Generation runs in a worker thread, so the server
keeps answering ``/health`` and rejecting bad requests meanwhile.

Each request's answer comes as :class:`~neo_model.serve.protocol.Delta` events, one per
generated token as it comes; text that may still turn into a stop string, or is half a UTF-8
character, is held back until it cannot. A request whose client has gone is marked cancelled;
a batch whose clients have all gone stops generating.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from neo_data.encoding.tokens import NeoTokenizer
from neo_model.generate import Prompt, SamplingParams, generate_steps
from neo_model.model import NeoChatModel
from neo_model.serve.protocol import (
    Answer,
    ChatRequest,
    Delta,
    ServeSettings,
    request_prompt,
    sampling,
)


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

    def submit(self, req: ChatRequest, prompt: Prompt | None = None) -> _Job:
        """Validate ``req`` (a :class:`BadRequest` names what is wrong) and queue it; ``prompt``
        is its :func:`request_prompt` when the caller built it already (off the event loop)."""
        params = sampling(req, self.settings)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        prompt = prompt or request_prompt(req, self.tok, self.settings)
        job = _Job(prompt, params, stops, self.tok, asyncio.get_running_loop())
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

    async def answer(self, req: ChatRequest, prompt: Prompt | None = None) -> Answer:
        job = self.submit(req, prompt)
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
