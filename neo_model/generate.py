"""Batched generation with a KV cache (keys 2 * head_dim wide: T | H | W; values head_dim).

Prompts are left-padded to one length; padding is a sample of its own in NEO's mask, so it is
invisible to the prompt tokens, and each row keeps its own T positions: prompt positions come
from :func:`neo_data.encoding.positions.thw_indices`, and every generated token gets
T = :func:`neo_data.encoding.positions.next_t` (then +1 per step) and H = W = 0 -- the rule the packer
uses for training data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from neo_data.encoding.positions import next_t, thw_indices
from neo_data.encoding.tokens import ENDOFTEXT_ID, IM_END_ID, IMG_CONTEXT_ID
from neo_model.attention import PAD_SAMPLE, Backend
from neo_model.cache import KVCache
from neo_model.model import NeoChatModel


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt (e.g. ``render_turns(..., add_generation_prompt=True).input_ids``) and
    its normalised images ``[3, H, W]``, one per ``<IMG_CONTEXT>`` run, in order."""

    input_ids: Sequence[int] | np.ndarray
    images: Sequence[torch.Tensor] = field(default_factory=tuple)


@dataclass(frozen=True)
class SamplingParams:
    """Greedy when ``temperature`` is 0; otherwise softmax sampling, optionally top-k."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    stop_id: int = IM_END_ID
    seed: int = 0


@torch.no_grad()
def generate(
    model: NeoChatModel,
    prompts: Sequence[Prompt],
    params: SamplingParams | None = None,
    prefill_backend: Backend | None = None,
) -> list[list[int]]:
    """Generate for a batch of prompts; returns each row's new tokens, up to (without) the stop token."""
    out: list[list[int]] = [[] for _ in prompts]
    for tokens in generate_steps(model, prompts, params, prefill_backend):
        for row, token in zip(out, tokens, strict=True):
            if token is not None:
                row.append(token)
    return out


@torch.no_grad()
def generate_steps(
    model: NeoChatModel,
    prompts: Sequence[Prompt],
    params: SamplingParams | None = None,
    prefill_backend: Backend | None = None,
) -> Iterator[list[int | None]]:
    """:func:`generate` one step at a time: yields, per step, each row's new token (``None``
    for a row that has stopped, the step its stop token came and after). Streaming servers
    read it token by token; it ends when every row has stopped or after ``max_new_tokens``.

    The prefill computes logits at the last position only and never a dense ``L x L`` mask:
    ``prefill_backend`` None is the model's default, FlexAttention with the block mask on CUDA,
    ``sdpa_segments`` elsewhere. Decoding steps use SDPA with their ``[B, 1, 1, S]`` mask."""
    params = params or SamplingParams()
    device = model.language_model.lm_head.weight.device
    factor = model.config.image_factor
    rows = []
    for prompt in prompts:
        grids = [(img.shape[1] // factor, img.shape[2] // factor) for img in prompt.images]
        ids = np.asarray(prompt.input_ids, dtype=np.int64)
        t, h, w, ordinal = thw_indices(ids, grids)
        rows.append((ids, t, h, w, ordinal))
    batch = _left_pad(rows, device)
    images = [img.to(device) for prompt in prompts for img in prompt.images]
    t_next = torch.tensor([next_t(row[1]) for row in rows], device=device)

    cache = KVCache()
    generator = torch.Generator(device=device).manual_seed(params.seed)
    prefill = model(
        **batch, pixel_values=images, cache=cache, backend=prefill_backend, logits_to_keep=1
    )
    logits = prefill.logits[:, -1]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    ones = torch.ones(len(prompts), 1, dtype=torch.long, device=device)
    for _ in range(params.max_new_tokens):
        token = _choose(logits, params, generator)
        step: list[int | None] = [None] * len(prompts)
        for i in torch.nonzero(~done).flatten().tolist():
            if token[i] == params.stop_id:
                done[i] = True
            else:
                step[i] = int(token[i])
        yield step
        if done.all():
            return
        logits = model(
            token[:, None],
            t_next[:, None],
            0 * ones,
            0 * ones,
            -ones,
            sample_ids=0 * ones,
            cache=cache,
            backend="sdpa",
        ).logits[:, -1]
        t_next = t_next + 1


def _left_pad(rows: list[tuple[np.ndarray, ...]], device: torch.device) -> dict[str, torch.Tensor]:
    """Left-pad ``(ids, t, h, w, ordinal)`` rows to one length; padding is sample -1."""
    length = max(len(row[0]) for row in rows)
    names = ("input_ids", "t_index", "h_index", "w_index", "image_ordinal")
    fill = {"input_ids": ENDOFTEXT_ID, "image_ordinal": -1}
    batch = {name: np.full((len(rows), length), fill.get(name, 0), np.int64) for name in names}
    batch["sample_ids"] = np.full((len(rows), length), PAD_SAMPLE, np.int64)
    for i, row in enumerate(rows):
        n = len(row[0])
        for name, column in zip(names, row, strict=True):
            batch[name][i, length - n :] = column
        batch["sample_ids"][i, length - n :] = 0
    return {name: torch.from_numpy(array).to(device) for name, array in batch.items()}


def _choose(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> torch.Tensor:
    """Next token ``[B]`` from last-position logits ``[B, vocab]``."""
    logits = logits.float().clone()  # the caller's tensor stays as it is
    logits[:, IMG_CONTEXT_ID] = -torch.inf  # image tokens only come with pixels, never generated
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k is not None:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).flatten()
