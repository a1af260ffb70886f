"""The language-model loss: per-token weights, and cross-entropy summed with them.

Two paths share :func:`loss_weights`: :func:`causal_lm_loss` on full ``[B, L, vocab]`` logits
(the weighted mean that ``NeoChatModel(..., labels=...)`` returns), and
:func:`chunked_token_loss` on hidden states (the trainer's path: the vocabulary projection runs
in chunks, never for every position at once, with its gradients fused into the forward pass).
Both compute the cross-entropy in fp32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

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


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum_i w_i CE(hidden_i @ head.T, labels_i)`` with its gradients computed in the forward
    pass, one ``chunk`` of rows at a time (a fused linear cross-entropy): a chunk's logits
    become ``w * (softmax - onehot)`` right away, which gives that chunk's share of the gradient
    of ``hidden`` and of ``head``; the backward pass only scales them by the incoming gradient.
    Each chunk's ``[chunk, vocab]`` logits exist once: no recomputation in the backward pass,
    one vocabulary projection and one softmax per row (instead of two of each and a softmax
    backward). The price is a ``head``-sized fp32 gradient buffer held from the forward pass to
    the backward pass; a frozen ``head`` (stage 1) needs none, a ``hidden`` without grad none of
    its own."""

    @staticmethod
    def forward(ctx, hidden, head, labels, weights, chunk):  # noqa: D102
        need_hidden, need_head = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_head = (
            torch.zeros_like(head, dtype=torch.promote_types(head.dtype, torch.float32))
            if need_head
            else None
        )
        for s in range(0, hidden.shape[0], chunk):
            h, y, w = hidden[s : s + chunk], labels[s : s + chunk], weights[s : s + chunk]
            logits = F.linear(h, head).float()
            lse = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, y[:, None])[:, 0]
            total += ((lse - target) * w).sum()
            if not (need_hidden or need_head):
                continue
            # d/dlogits of w * CE: w * (softmax - onehot), in place over the logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, y[:, None], -torch.ones_like(target)[:, None])
            grad.mul_(w[:, None])
            grad = grad.to(h.dtype)
            if need_hidden:
                grad_hidden[s : s + chunk] = grad @ head.to(h.dtype)
            if need_head:
                grad_head += (grad.t() @ h).to(grad_head.dtype)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_head) if g is not None))
        ctx.head_dtype = head.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):  # noqa: D102
        saved = iter(ctx.saved_tensors)
        grad_hidden = grad_head = None
        if ctx.needs_input_grad[0]:
            grad_hidden = next(saved)
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_head = (next(saved) * grad_total).to(ctx.head_dtype)
        return grad_hidden, grad_head, None, None, None


def chunked_token_loss(
    hidden: torch.Tensor,
    head: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """``sum_i weights_i * CE(hidden_i @ head.T, labels_i)`` over ``[N, hidden]`` rows, one
    ``chunk`` of rows at a time (:class:`_LinearCrossEntropy`): the peak is one chunk's
    ``[chunk, vocab]`` logits, not ``[N, vocab]``, and no chunk is projected twice."""
    return _LinearCrossEntropy.apply(hidden, head, labels, weights, chunk or LOSS_CHUNK)


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
