"""The learning-rate schedule and the per-stage learning rates."""

from __future__ import annotations

import pytest

from neo_data.manifest.train import TrainSpec
from neo_model.train.optim import lr_factor


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
