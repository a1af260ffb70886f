"""The optimizer, the learning-rate schedule and the per-stage learning rates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from neo_data.manifest.train import TrainSpec
from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.train.optim import adamw_implementation, build_optimizer, lr_factor
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
    groups: dict[float, set[str]] = {}
    for g in opt.param_groups:
        groups.setdefault(g["weight_decay"], set()).update(by_id[id(p)] for p in g["params"])
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


def test_the_patch_embedding_trains_at_vision_lr_scale_times_the_peak():
    """``vision_lr_scale: 10``: every ``vision_model.*`` parameter (and no other) is in a group
    at 10 x the peak, through the warm-up and the cosine; the rest keep the peak's schedule."""
    cfg = debug()
    model = NeoChatModel(cfg)
    set_trainable(model, cfg, "pretrain", "stage")
    spec = TrainSpec(init={"kind": "random"}, output="x", steps=10, lr=1e-3, vision_lr_scale=10)
    opt, sched = build_optimizer(model, spec, "pretrain", spec.steps)
    by_id = {id(p): n for n, p in model.named_parameters()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    fast = {by_id[id(p)] for g in opt.param_groups if g["initial_lr"] == 1e-2 for p in g["params"]}
    slow = {by_id[id(p)] for g in opt.param_groups if g["initial_lr"] == 1e-3 for p in g["params"]}
    assert fast == {n for n in trained if n.startswith("vision_model.")} and fast
    assert slow == trained - fast and slow
    for _ in range(5):
        opt.step()
        sched.step()
    factors = [g["lr"] / g["initial_lr"] for g in opt.param_groups]
    assert factors == pytest.approx([factors[0]] * len(factors)) and 0 < factors[0] < 1
    assert {g["initial_lr"] for g in opt.param_groups} == {1e-2, 1e-3}


def _sharded_mlp(seed: int) -> torch.nn.Module:
    """A small MLP sharded with FSDP2 on the one-rank gloo group (its parameters DTensors)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
    )
    mesh = dist.device_mesh.init_device_mesh("cpu", (1,))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def test_the_trainer_steps_fsdp2_dtensors_with_foreach_adamw_like_the_per_tensor_loop(
    one_rank_group,
):
    """``build_optimizer`` picks the multi-tensor AdamW (``foreach`` on CPU); over FSDP2's
    DTensor shards on gloo it moves every weight as torch's per-tensor loop does."""
    spec = TrainSpec(init={"kind": "random"}, output="x", steps=5, lr=1e-2, warmup=0)
    ours, peer = _sharded_mlp(0), _sharded_mlp(0)
    opt, _ = build_optimizer(ours, spec, "sft", spec.steps)
    assert all(g["foreach"] and not g["fused"] for g in opt.param_groups)
    assert adamw_implementation([torch.zeros(1)]) == {"foreach": True}
    ref = torch.optim.AdamW(
        [{"params": [p for p in peer.parameters() if p.ndim >= 2], "weight_decay": 0.01},
         {"params": [p for p in peer.parameters() if p.ndim < 2], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), foreach=False,
    )  # fmt: skip
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for model, o in ((ours, opt), (peer, ref)):
            model(x).square().mean().backward()
            o.step()
            o.zero_grad(set_to_none=True)
    for (name, a), b in zip(ours.named_parameters(), peer.parameters(), strict=True):
        assert isinstance(a, DTensor)
        assert not torch.equal(a.full_tensor(), _sharded_mlp(0).state_dict()[name].full_tensor())
        torch.testing.assert_close(a.full_tensor(), b.full_tensor(), rtol=1e-6, atol=1e-7)
