"""The language-model loss: per-token weights, and cross-entropy summed with them.

Two paths share :func:`loss_weights`: :func:`causal_lm_loss` on full ``[B, L, vocab]`` logits
(the weighted mean that ``NeoChatModel(..., labels=...)`` returns), and
:func:`chunked_token_loss` on hidden states (the trainer's path: the vocabulary projection runs
in recomputed chunks, never for every position at once). Both compute the cross-entropy in fp32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from neo_data.encoding.tokens import IGNORE_INDEX

LossWeighting = Literal["token", "sample_sqrt"]


def loss_weights(
    labels: torch.Tensor, sample_ids: torch.Tensor, weighting: LossWeighting = "token"
) -> torch.Tensor:
    """Per-token loss weights ``[B, L]`` (float32; 0 where ``labels`` is -100).

    ``"token"``: 1 per supervised token. ``"sample_sqrt"`` (the released training code): a token
    of a sample with ``n`` supervised tokens weighs ``1/sqrt(n)``, so a sample's total is
    ``sqrt(n)``. ``sample_ids`` tells the packed samples apart, row by row.
    """
    weight = (labels != IGNORE_INDEX).to(torch.float32)
    if weighting == "token":
        return weight
    if weighting != "sample_sqrt":
        raise ValueError(f"loss_weighting {weighting!r}: expected 'token' or 'sample_sqrt'")
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    keys = torch.stack((rows.flatten(), sample_ids.flatten().to(rows.device)), dim=1)
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    flat = weight.flatten()
    per_sample = torch.bincount(group, weights=flat)
    return (flat / per_sample[group].clamp(min=1).sqrt()).view_as(weight)


def weighted_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``sum_i weights_i * CE(logits_i, labels_i)`` over ``[B, L]`` tokens (fp32; not divided:
    the trainer divides by the weight total over every rank and micro-batch of a step)."""
    token_loss = F.cross_entropy(
        logits.flatten(0, 1).float(),
        labels.long().flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return (token_loss * weights.flatten()).sum()


LOSS_CHUNK = 512  # supervised tokens per vocabulary-projection chunk


def _chunk_loss(
    hidden: torch.Tensor, head: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    logits = F.linear(hidden, head).float()
    return (F.cross_entropy(logits, labels, reduction="none") * weights).sum()


def chunked_token_loss(
    hidden: torch.Tensor,
    head: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """``sum_i weights_i * CE(hidden_i @ head.T, labels_i)`` over ``[N, hidden]`` rows, one
    ``chunk`` of rows at a time, each recomputed in the backward pass (activation
    checkpointing): the peak is one chunk's ``[chunk, vocab]`` logits, not ``[N, vocab]``."""
    chunk = chunk or LOSS_CHUNK
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        e = s + chunk
        total = total + checkpoint(
            _chunk_loss, hidden[s:e], head, labels[s:e], weights[s:e], use_reentrant=False
        )
    return total


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    sample_ids: torch.Tensor,
    weighting: LossWeighting = "token",
) -> torch.Tensor:
    """Weighted mean cross-entropy over supervised tokens (fp32).

    Args:
        logits: ``[B, L, vocab]``.
        labels: ``[B, L]`` already-shifted targets, -100 = not supervised.
        sample_ids: ``[B, L]`` packed-sample id per token (for ``"sample_sqrt"``).
        weighting: see :func:`loss_weights`.
    """
    weights = loss_weights(labels, sample_ids, weighting)
    return weighted_token_loss(logits, labels, weights) / weights.sum().clamp(min=1e-6)
