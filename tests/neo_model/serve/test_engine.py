"""The serving engine in-process: per-round batching gives each request exactly what it gets
alone, per-token streaming, stop strings never leak into a stream."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from neo_data.encoding.tokens import load_tokenizer
from neo_model.config import debug
from neo_model.generate import Prompt, SamplingParams, generate, generate_steps
from neo_model.model import NeoChatModel
from neo_model.prompting import build_prompt
from neo_model.serve.engine import Engine, _held_back, _Job
from neo_model.serve.protocol import ChatRequest, ServeSettings


@pytest.fixture(scope="module")
def model() -> NeoChatModel:
    torch.manual_seed(0)
    return NeoChatModel(debug()).eval()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def settings(**kw) -> ServeSettings:
    cfg = debug()
    return ServeSettings("neo-debug", cfg.min_pixels, cfg.max_pixels, max_new_tokens=32, **kw)


def request(text: str, max_tokens: int, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], max_tokens=max_tokens, **kw)


def alone(model, tok, text: str, max_tokens: int) -> str:
    ids, _, _ = build_prompt(tok, [("user", text)], [], 1024, 65536)
    new = generate(model, [Prompt(ids)], SamplingParams(max_new_tokens=max_tokens))[0]
    return tok.decode(new, skip_special_tokens=True)


def test_generate_steps_yields_what_generate_returns(model, tok):
    prompts = [
        Prompt(build_prompt(tok, [("user", q)], [], 1024, 65536)[0])
        for q in ("Hi.", "A b c d e f?")
    ]
    params = SamplingParams(max_new_tokens=6)
    steps = list(generate_steps(model, prompts, params))
    assert 1 <= len(steps) <= 6 and all(len(s) == 2 for s in steps)
    rows = [[t for t in col if t is not None] for col in zip(*steps, strict=True)]
    assert rows == generate(model, prompts, params)


def test_queued_requests_batch_and_each_gets_its_own_answer(model, tok):
    questions = [
        ("Count.", 3),
        ("Name a colour please.", 7),
        ("Why?", 5),
        ("One two three four five six.", 2),
    ]

    async def main():
        engine = Engine(model, tok, settings(max_batch_size=3))
        tasks = [asyncio.create_task(engine.answer(request(q, n))) for q, n in questions]
        answers = await asyncio.gather(*tasks)
        return engine.stats, answers

    stats, answers = asyncio.run(main())
    # the four arrive together: a batch of three (the cap) then one
    assert stats == {"requests": 4, "batches": 2, "largest_batch": 3}
    for (q, n), a in zip(questions, answers, strict=True):
        assert a.text == alone(model, tok, q, n), q
        assert a.completion_tokens <= n
        assert a.finish_reason == ("length" if a.completion_tokens == n else "stop")


def test_greedy_and_sampled_requests_do_not_share_a_batch(model, tok):
    async def main():
        engine = Engine(model, tok, settings())
        reqs = [request("Hi.", 3), request("Hi.", 3, temperature=0.8, seed=1), request("Yo.", 3)]
        await asyncio.gather(*(engine.answer(r) for r in reqs))
        return engine.stats

    assert asyncio.run(main()) == {"requests": 3, "batches": 2, "largest_batch": 2}


def test_stream_comes_token_by_token_and_joins_to_the_answer(model, tok):
    async def main():
        engine = Engine(model, tok, settings())
        deltas = [d async for d in engine.events(engine.submit(request("Tell me more.", 12)))]
        return deltas, await engine.answer(request("Tell me more.", 12))

    deltas, answer = asyncio.run(main())
    assert "".join(d.text for d in deltas) == answer.text
    assert deltas[-1].finish_reason == answer.finish_reason
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert answer.completion_tokens == 12  # a long answer: one chunk would be one delta
    assert len([d for d in deltas if d.text]) >= 3


class PieceTokenizer:
    """Token i decodes to PIECES[i] (a stand-in to script the text a stream sees)."""

    PIECES = ["Hello", " wor", "ld", " E", "N", "D", "!", "\ufffd"]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.PIECES[i] for i in ids)


def run_job(tokens: list[int | None], stops: list[str], max_new: int = 16):
    async def main():
        job = _Job(Prompt([1, 2]), SamplingParams(max_new_tokens=max_new), stops,
                   PieceTokenizer(), asyncio.get_running_loop())  # fmt: skip
        for t in tokens:
            if not job.finished:
                job.add(t)
        job.finish("length")
        await asyncio.sleep(0)
        out = []
        while not job.queue.empty():
            out.append(job.queue.get_nowait())
        return out

    return asyncio.run(main())


def test_stop_string_is_held_back_and_never_streamed():
    deltas = run_job([0, 1, 2, 3, 4, 5, 6], ["END"])
    texts = [d.text for d in deltas]
    assert texts == ["Hello", " wor", "ld", " ", ""]  # " E", " EN" wait; "END" cuts
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens == 6


def test_a_held_back_prefix_is_sent_once_it_cannot_be_a_stop():
    deltas = run_job([0, 3, 6, None], ["EX"])
    assert [d.text for d in deltas] == ["Hello", " ", "E!", ""]
    assert deltas[-1].finish_reason == "stop"


def test_half_characters_wait_and_the_length_limit_finishes():
    deltas = run_job([0, 7, 1], [], max_new=3)
    assert [d.text for d in deltas] == ["Hello", "\ufffd wor"]
    assert deltas[-1].finish_reason == "length"


def test_held_back_counts_the_longest_stop_prefix():
    assert _held_back("abcE", ["END"]) == 1
    assert _held_back("abcEN", ["END", "NX"]) == 2
    assert _held_back("abc", ["END"]) == 0
    assert _held_back("abc", []) == 0


class SlowModel:
    """The model behind a 30 ms delay per forward call, counting the calls."""

    def __init__(self, model: NeoChatModel):
        self.model, self.calls = model, 0
        self.language_model, self.config = model.language_model, model.config

    def __call__(self, *args, **kwargs):
        time.sleep(0.03)
        self.calls += 1
        return self.model(*args, **kwargs)


def test_a_client_that_leaves_stops_its_batch(model, tok):
    slow = SlowModel(model)

    async def main():
        engine = Engine(slow, tok, settings())
        events = engine.events(engine.submit(request("Tell me a long story.", 30)))
        first = await anext(events)
        await events.aclose()  # what the server does when a streaming client disconnects
        await asyncio.sleep(0.5)
        calls = slow.calls
        await asyncio.sleep(0.3)
        return first, calls, slow.calls

    first, calls, later = asyncio.run(main())
    assert first.finish_reason is None
    assert calls == later < 30  # stopped, well before its 30 tokens


def test_sampled_requests_batch_only_with_the_same_temperature_top_k_and_seed(model, tok):
    """Sampled rows share one generator, so only requests that sample alike batch; a request
    alone in its batch gets exactly its own seeded draw."""
    reqs = [
        request("Hi.", 4, temperature=1.0, seed=1),
        request("Hi.", 4, temperature=1.0, seed=2),
        request("Hi.", 4, temperature=1.0, top_k=5, seed=1),
        request("Yo.", 4, temperature=1.0, seed=1),
    ]

    async def main():
        engine = Engine(model, tok, settings())
        answers = await asyncio.gather(*(engine.answer(r) for r in reqs))
        return engine.stats, answers

    stats, answers = asyncio.run(main())
    assert stats == {"requests": 4, "batches": 3, "largest_batch": 2}
    for req, answer in zip(reqs[1:3], answers[1:3], strict=True):
        ids, _, _ = build_prompt(tok, [("user", "Hi.")], [], 1024, 65536)
        params = SamplingParams(max_new_tokens=4, temperature=1.0, top_k=req.top_k, seed=req.seed)
        new = generate(model, [Prompt(ids)], params)[0]
        assert answer.text == tok.decode(new, skip_special_tokens=True)
    assert answers[0].text != answers[1].text  # the seed matters
