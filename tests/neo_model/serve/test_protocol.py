"""The request side of ``neo serve`` without a server: what a request's fields become (sampling
parameters, turns with image placeholders) and its limits, each at its boundary."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from neo_data.encoding.tokens import load_tokenizer
from neo_model.config import debug
from neo_model.generate import SamplingParams
from neo_model.serve.protocol import (
    PLACEHOLDER,
    BadRequest,
    ChatRequest,
    ServeSettings,
    request_prompt,
    request_turns,
    sampling,
)
from tests.helpers import image_bytes

CFG = debug()
SETTINGS = ServeSettings(
    "neo-debug", CFG.min_pixels, CFG.max_pixels, max_new_tokens=16, default_max_tokens=7
)
USER = {"role": "user", "content": "hello"}


def request(**fields) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [USER], **fields})


def image_part(width: int, height: int) -> dict:
    url = "data:image/png;base64," + base64.b64encode(image_bytes(width, height)).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def test_sampling_takes_each_field_of_the_request():
    got = sampling(request(max_tokens=9, temperature=0.8, top_k=40, seed=5), SETTINGS)
    assert got == SamplingParams(max_new_tokens=9, temperature=0.8, top_k=40, seed=5)
    # Nothing asked: greedy, the server's default length, seed 0.
    assert sampling(request(), SETTINGS) == SamplingParams(max_new_tokens=7)
    assert sampling(request(top_p=1.0), SETTINGS) == SamplingParams(max_new_tokens=7)


def test_max_completion_tokens_wins_and_the_cap_is_inclusive():
    assert sampling(request(max_tokens=3, max_completion_tokens=5), SETTINGS).max_new_tokens == 5
    assert sampling(request(max_completion_tokens=16), SETTINGS).max_new_tokens == 16
    with pytest.raises(BadRequest, match="max_tokens 17 is above this server's cap of 16"):
        sampling(request(max_tokens=17), SETTINGS)


def test_image_parts_become_placeholders_where_they_stand():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Compare "}, image_part(64, 32),
            {"type": "text", "text": "with"}, image_part(32, 96),
        ]},
        {"role": "assistant", "content": None},
    ]  # fmt: skip
    turns, images = request_turns(ChatRequest(messages=messages), SETTINGS)
    assert turns == [
        ("system", "Be brief."),
        ("user", f"Compare {PLACEHOLDER}\nwith{PLACEHOLDER}\n"),
        ("assistant", ""),
    ]
    assert [im.size for im in images] == [(64, 32), (32, 96)]


def test_the_prompt_limit_is_inclusive():
    tok = load_tokenizer()
    req = ChatRequest(messages=[{"role": "user", "content": [image_part(64, 64)]}])
    n = len(request_prompt(req, tok, SETTINGS).input_ids)
    assert len(request_prompt(req, tok, replace(SETTINGS, max_prompt_tokens=n)).input_ids) == n
    with pytest.raises(BadRequest, match=f"the prompt has {n} tokens, above .* limit of {n - 1}"):
        request_prompt(req, tok, replace(SETTINGS, max_prompt_tokens=n - 1))
