"""The optimizer, the learning-rate schedule and the per-stage learning rates."""

from __future__ import annotations

import math

import pytest

from neo_data.manifest.train import TrainSpec
from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.train.optim import build_optimizer, lr_factor
from neo_model.train.stages import set_trainable


def test_schedule_warms_up_then_decays_to_the_minimum_ratio():
    total, warmup, ratio = 100, 10, 0.1
    f = [lr_factor(s, warmup, total, ratio) for s in range(total + 5)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10], strict=False))
    assert all(a >= b for a, b in zip(f[10:total], f[11:total], strict=False))
    assert f[total] == pytest.approx(ratio) and f[-1] == pytest.approx(ratio)
    spec = TrainSpec(init={"kind": "random"}, output="x", steps=1)
    assert spec.resolved_lr("pretrain") == (8e-4, 0.1)
    assert spec.resolved_lr("midtrain") == (4e-5, 0.2)
    assert spec.resolved_lr("sft") == (5e-5, 0.1)


def test_adamw_over_the_trained_parameters_decays_matrices_only_on_the_stage_schedule():
    """Stage 1 on the debug model, 20 steps with 10% warm-up: AdamW (the spec's betas) over
    exactly the trained parameters, weight decay on the matrices, none on norms and biases; the
    learning rate of step k (0-based) rises linearly over 2 steps to the peak, then follows a
    cosine that reaches min_lr_ratio x peak after the last step."""
    cfg = debug()
    model = NeoChatModel(cfg)
    set_trainable(model, cfg, "pretrain", "stage")
    spec = TrainSpec(
        init={"kind": "random"}, output="x", steps=20, warmup=0.1, lr=1e-3, weight_decay=0.05,
        betas=(0.8, 0.9),
    )  # fmt: skip
    opt, sched = build_optimizer(model, spec, "pretrain", spec.steps)
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: {by_id[id(p)] for p in g["params"]} for g in opt.param_groups}
    params = dict(model.named_parameters())
    trained = {n for n, p in params.items() if p.requires_grad}
    assert groups == {
        0.05: {n for n in trained if params[n].ndim > 1},  # linear and conv weights
        0.0: {n for n in trained if params[n].ndim == 1},
    }
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    peak, ratio = 1e-3, 0.1  # pretrain's min-LR ratio
    expected = [peak * (k + 1) / 2 for k in range(2)]
    expected += [
        peak * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * (k - 2) / 18)))
        for k in range(2, 20)
    ]
    used = []
    for _ in range(20):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert used == pytest.approx(expected, rel=1e-9)
    assert opt.param_groups[0]["lr"] == pytest.approx(peak * ratio)
