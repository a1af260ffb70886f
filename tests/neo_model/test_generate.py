"""Cached, batched generation equals recomputing the whole sequence at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import render_turns
from neo_model.generate import Prompt, SamplingParams, generate
from tests.neo_model.neo_inputs import random_images


@pytest.fixture(scope="module")
def prompts(tok) -> list[Prompt]:
    def prompt(turns, grids, seed):
        rendered = render_turns(tok, turns, grids, add_generation_prompt=True)
        return Prompt(rendered.input_ids, random_images(grids, seed))

    return [
        prompt([("user", "<image>\nWhat is in the picture?")], [(2, 2)], 0),
        prompt([("user", "Hi.")], [], 1),
        prompt([("user", "Compare <image> and <image>, please, in detail.")], [(1, 2), (2, 1)], 2),
    ]


def uncached_greedy(model, prompt: Prompt, steps: int) -> list[int]:
    """Reference: full forward over prompt + generated tokens at every step, argmax."""
    factor = model.config.image_factor
    grids = [(img.shape[1] // factor, img.shape[2] // factor) for img in prompt.images]
    ids = list(np.asarray(prompt.input_ids))
    new: list[int] = []
    for _ in range(steps):
        t, h, w, ordinal = (torch.from_numpy(a).long()[None] for a in thw_indices(ids, grids))
        with torch.no_grad():
            logits = model(torch.tensor([ids]), t, h, w, ordinal, pixel_values=prompt.images).logits
        new.append(int(logits[0, -1].argmax()))
        ids.append(new[-1])
    return new


def test_cached_generation_equals_uncached_recomputation(debug_model, prompts):
    steps = 6
    params = SamplingParams(max_new_tokens=steps, stop_id=-1)
    for prompt in prompts:
        assert generate(debug_model, [prompt], params)[0] == uncached_greedy(
            debug_model, prompt, steps
        )


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(debug_model, prompts):
    params = SamplingParams(max_new_tokens=5, stop_id=-1)
    batched = generate(debug_model, prompts, params)
    single = [generate(debug_model, [p], params)[0] for p in prompts]
    assert batched == single
    assert all(len(row) == 5 for row in batched)


def test_generation_stops_at_the_stop_token(debug_model, prompts):
    free = generate(debug_model, prompts[:1], SamplingParams(max_new_tokens=6, stop_id=-1))[0]
    stop = free[3]
    first = free.index(stop)
    stopped = generate(debug_model, prompts[:1], SamplingParams(max_new_tokens=6, stop_id=stop))[0]
    assert stopped == free[:first]


def test_sampling_is_seeded(debug_model, prompts):
    params = SamplingParams(max_new_tokens=4, temperature=1.0, top_k=50, stop_id=-1, seed=3)
    first = generate(debug_model, prompts, params)
    assert first == generate(debug_model, prompts, params)
    assert all(0 <= t < debug_model.config.vocab_size for row in first for t in row)
