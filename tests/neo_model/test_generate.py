"""Cached, batched generation equals recomputing the whole sequence at every step; sampling
draws from the tempered, top-k-truncated softmax."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import IMG_CONTEXT_ID, render_turns
from neo_model.config import debug
from neo_model.generate import Prompt, SamplingParams, generate, generate_steps
from neo_model.model import NeoOutput
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


# ---------------------------------------------------------------------------------------------
# The sampler's distribution, through generate_steps with fixed logits
# ---------------------------------------------------------------------------------------------

# Five candidate tokens; every other token has logit -inf. <IMG_CONTEXT> has the largest logit
# but is never generated (image tokens only come with pixels).
CANDIDATES = {10: 3.0, 11: 1.5, 12: 0.0, 13: -1.5, IMG_CONTEXT_ID: 5.0}


class FixedLogits:
    """Stands in for the model: every forward call gives the same last-position logits."""

    def __init__(self, config):
        self.config = config
        self.language_model = SimpleNamespace(lm_head=SimpleNamespace(weight=torch.zeros(1)))
        self.logits = torch.full((config.vocab_size,), -torch.inf)
        for token, value in CANDIDATES.items():
            self.logits[token] = value

    def __call__(self, input_ids, *args, **kwargs) -> NeoOutput:
        return NeoOutput(self.logits.repeat(input_ids.shape[0], 1, 1))  # [B, 1, vocab]


def draws(params: SamplingParams, rows: int = 20, steps: int = 25) -> np.ndarray:
    """``rows * steps`` tokens that ``generate_steps`` samples from :data:`CANDIDATES`."""
    prompts = [Prompt([151644, 872, 198])] * rows
    params = replace(params, max_new_tokens=steps, stop_id=-1)
    out = list(generate_steps(FixedLogits(debug()), prompts, params))
    assert len(out) == steps
    return np.asarray(out).flatten()


def expected_probabilities(temperature: float, top_k: int | None) -> dict[int, float]:
    """softmax(logit / temperature) over the candidates other than <IMG_CONTEXT>, restricted to
    the ``top_k`` largest, renormalised."""
    kept = sorted((t for t in CANDIDATES if t != IMG_CONTEXT_ID), key=lambda t: -CANDIDATES[t])
    kept = kept[:top_k] if top_k else kept
    weights = {t: math.exp(CANDIDATES[t] / temperature) for t in kept}
    return {t: w / sum(weights.values()) for t, w in weights.items()}


@pytest.mark.parametrize(("temperature", "top_k"), [(2.0, None), (1.5, 2)])
def test_sampling_follows_the_tempered_truncated_softmax(temperature, top_k):
    """500 seeded draws: only the top_k candidates appear, with the frequencies of
    softmax(logits / temperature) (chi-square at p = 1e-6, so a correct sampler passes whatever
    the seed). A wrong sampler's statistic is far above the bound: greedy ~400 and ~185,
    temperature ignored ~110 in the first case; an off-by-one or ignored top_k draws a
    third candidate in the second."""
    got = draws(SamplingParams(temperature=temperature, top_k=top_k, seed=7))
    probs = expected_probabilities(temperature, top_k)
    assert set(np.unique(got).tolist()) <= set(probs)  # nothing outside the kept candidates
    observed = np.array([(got == t).sum() for t in probs])
    expected = np.array(list(probs.values())) * len(got)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi2.isf(1e-6, df=len(probs) - 1), (observed, expected.round())
    assert (observed > 0).all()  # every kept candidate is drawn (each has p >= 1% here)


def test_greedy_takes_the_largest_generable_logit_and_seeds_change_the_draws():
    assert set(draws(SamplingParams(temperature=0.0), rows=4, steps=3).tolist()) == {10}
    assert set(draws(SamplingParams(temperature=1.0, top_k=1), rows=4, steps=3).tolist()) == {10}
    sampled = SamplingParams(temperature=1.0)
    first = draws(replace(sampled, seed=1), rows=8, steps=4)
    assert np.array_equal(first, draws(replace(sampled, seed=1), rows=8, steps=4))
    assert not np.array_equal(first, draws(replace(sampled, seed=2), rows=8, steps=4))


class RecordingModel:
    """The model, keeping a copy of the last-position logits ``[B, vocab]`` of every call."""

    def __init__(self, model):
        self.model, self.config, self.language_model = model, model.config, model.language_model
        self.logits: list[torch.Tensor] = []

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.logits.append(out.logits[:, -1].clone())
        return out


def test_every_cached_step_gives_the_logits_of_a_full_forward(debug_model, prompts):
    """Logits, not only tokens (a random model's argmax hardly depends on attention): each
    step of batched, left-padded, cached generation equals the uncached forward pass over the
    prompt and the tokens generated so far, positions from the T/H/W rule."""
    recording = RecordingModel(debug_model)
    steps = 4
    new = generate(recording, prompts, SamplingParams(max_new_tokens=steps, stop_id=-1))
    assert len(recording.logits) == steps + 1  # the prompt, then one call per new token
    factor = debug_model.config.image_factor
    for row, prompt in enumerate(prompts):
        grids = [(img.shape[1] // factor, img.shape[2] // factor) for img in prompt.images]
        ids = [*np.asarray(prompt.input_ids).tolist(), *new[row]]
        t, h, w, ordinal = (torch.from_numpy(a).long()[None] for a in thw_indices(ids, grids))
        with torch.no_grad():
            full = debug_model(torch.tensor([ids]), t, h, w, ordinal, pixel_values=prompt.images)
        n = len(prompt.input_ids)
        for step, logits in enumerate(recording.logits):
            torch.testing.assert_close(
                logits[row], full.logits[0, n - 1 + step], rtol=1e-4, atol=1e-4
            )


# ---------------------------------------------------------------------------------------------
# The prefill: last-position logits only, no L x L mask
# ---------------------------------------------------------------------------------------------


def old_prefill_logits(model, prompts: list[Prompt]) -> torch.Tensor:
    """The former prefill, as reference: the left-padded batch through the dense SDPA mask with
    logits at every position; the last one ``[B, vocab]``."""
    factor = model.config.image_factor
    length = max(len(p.input_ids) for p in prompts)
    cols = {k: torch.zeros(len(prompts), length, dtype=torch.long) for k in ("t", "h", "w")}
    ids = torch.full((len(prompts), length), 151643)
    ordinal = torch.full((len(prompts), length), -1)
    sample = torch.full((len(prompts), length), -1)
    for i, p in enumerate(prompts):
        grids = [(img.shape[1] // factor, img.shape[2] // factor) for img in p.images]
        n = len(p.input_ids)
        t, h, w, o = (torch.from_numpy(a).long() for a in thw_indices(p.input_ids, grids))
        ids[i, length - n :] = torch.as_tensor(np.asarray(p.input_ids))
        for k, v in zip("thw", (t, h, w), strict=True):
            cols[k][i, length - n :] = v
        ordinal[i, length - n :], sample[i, length - n :] = o, 0
    images = [img for p in prompts for img in p.images]
    with torch.no_grad():
        out = model(ids, cols["t"], cols["h"], cols["w"], ordinal, sample_ids=sample,
                    pixel_values=images, backend="sdpa")  # fmt: skip
    return out.logits[:, -1]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", [None, "flex"])
def test_prefill_keeps_only_last_logits_and_builds_no_square_mask(
    debug_model, prompts, monkeypatch, backend
):
    """Batch of image+text prompts of different lengths: the prefill's logits are ``[B, 1,
    vocab]``, equal the former full-logits dense-mask prefill at the last position, no mask
    bigger than one query row is built, and greedy tokens equal the uncached recomputation."""
    import neo_model.attention as attention

    made: list[tuple[int, int]] = []
    create_mask = attention.create_mask

    def recording(mod, b, h, q_len, kv_len, device=None):
        made.append((q_len, kv_len))
        return create_mask(mod, b, h, q_len, kv_len, device)

    monkeypatch.setattr(attention, "create_mask", recording)
    logits: list[torch.Tensor] = []
    hook = debug_model.language_model.lm_head.register_forward_hook(
        lambda module, args, out: logits.append(out.clone())
    )
    try:
        params = SamplingParams(max_new_tokens=3, stop_id=-1)
        tokens = generate(debug_model, prompts, params, prefill_backend=backend)
    finally:
        hook.remove()
    assert logits[0].shape == (len(prompts), 1, debug_model.config.vocab_size)
    assert made and all(q_len == 1 for q_len, _ in made), made  # decoding steps only
    torch.testing.assert_close(logits[0][:, 0], old_prefill_logits(debug_model, prompts))
    if backend == "flex":  # the default path's tokens: test_cached_generation_equals_...
        assert tokens == [uncached_greedy(debug_model, p, 3) for p in prompts]


def test_logits_to_keep_refuses_labels(debug_model, prompts):
    ids = torch.as_tensor(np.asarray(prompts[1].input_ids))[None]
    zeros = torch.zeros_like(ids)
    with pytest.raises(ValueError, match="logits_to_keep"):
        debug_model(ids, zeros, zeros, zeros, zeros - 1, labels=ids, logits_to_keep=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefill_with_the_block_mask_equals_the_dense_prefill(debug_model, prompts):
    """On CUDA the prefill defaults to compiled FlexAttention with the block mask; its
    last-position logits (fp32) equal the former dense-mask prefill's on the CPU."""

    model = copy.deepcopy(debug_model).cuda()
    model.language_model.tie_weights()
    logits: list[torch.Tensor] = []
    hook = model.language_model.lm_head.register_forward_hook(
        lambda module, args, out: logits.append(out.detach().cpu())
    )
    try:
        generate(model, prompts, SamplingParams(max_new_tokens=1, stop_id=-1))
    finally:
        hook.remove()
    expected = old_prefill_logits(debug_model, prompts)
    torch.testing.assert_close(logits[0][:, 0], expected, rtol=1e-3, atol=1e-3)
