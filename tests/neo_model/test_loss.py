"""The loss on its own: per-sample weighting against a hand-written weighted mean."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neo_model.loss import causal_lm_loss, loss_weights


def test_sample_sqrt_weighting():
    torch.manual_seed(0)
    logits = torch.randn(1, 10, 7)
    labels = torch.tensor([[1, 2, 3, -100, -100, 4, -100, 5, -100, -100]])
    sample_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, -1, -1]])
    ce = F.cross_entropy(logits[0], labels[0], ignore_index=-100, reduction="none")
    w_first, w_second = 1 / 3**0.5, 1 / 2**0.5  # 3 and 2 supervised tokens
    expected = (w_first * ce[:3].sum() + w_second * (ce[5] + ce[7])) / (3 * w_first + 2 * w_second)
    got = causal_lm_loss(logits, labels, sample_ids, "sample_sqrt")
    torch.testing.assert_close(got, expected)
    token_mean = causal_lm_loss(logits, labels, sample_ids, "token")
    torch.testing.assert_close(token_mean, ce[labels[0] != -100].mean())


def test_sample_sqrt_weighting_keeps_rows_apart():
    """Every row's sample ids start at 0: sample 0 of row 0 and sample 0 of row 1 are two
    samples, each weighted by its own supervised count."""
    labels = torch.tensor([[1, 2, 3, -100], [4, -100, 5, -100]])
    sample_ids = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])
    got = loss_weights(labels, sample_ids, "sample_sqrt")
    third = 3**-0.5
    torch.testing.assert_close(got, torch.tensor([[third, third, third, 0], [1.0, 0, 1.0, 0]]))
    assert torch.equal(loss_weights(labels, sample_ids, "token"), (labels != -100).float())


def test_fused_chunked_loss_matches_autograd_on_full_logits():
    """chunked_token_loss (gradients fused into the forward pass, several chunks, the last one
    short) against plain autograd on all logits; a frozen head (stage 1) gets no gradient and
    the hidden states still get theirs; the incoming gradient scales both."""
    from neo_model.loss import chunked_token_loss

    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64)
    head = torch.randn(11, 5, dtype=torch.float64)
    labels = torch.randint(0, 11, (7,))
    weights = torch.rand(7)
    for head_trains in (True, False):
        h_ref = hidden.clone().requires_grad_()
        w_ref = head.clone().requires_grad_(head_trains)
        ce = F.cross_entropy((h_ref @ w_ref.T).float(), labels, reduction="none")
        (3.0 * (ce * weights).sum()).backward()
        h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_(head_trains)
        loss = chunked_token_loss(h, w, labels, weights, chunk=3)
        (3.0 * loss).backward()
        torch.testing.assert_close(loss, (ce * weights).sum().detach())
        torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)
        if head_trains:
            torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6)
        else:
            assert w.grad is None
