"""The optimizer of a training stage: AdamW over the trainable parameters and its learning-rate
schedule (linear warm-up, then cosine down to a fraction of the peak).

AdamW runs its multi-tensor implementation: ``fused=True`` when the parameters live on a CUDA
device (one kernel per parameter group), ``foreach=True`` elsewhere (one op over the list per
step of the update). Both accept FSDP2's DTensor shards and compute the same update as the
per-tensor loop (``foreach=False``) to float round-off; the per-tensor loop costs about five
times as much per parameter tensor (``benchmarks/bench_optim.py``).
"""

from __future__ import annotations

import math

import torch

from neo_data.manifest.train import TrainSpec
from neo_model.model import NeoChatModel

VISION_PREFIX = "vision_model."  # the patch embedding's parameters (vision_lr_scale)


def build_optimizer(
    model: NeoChatModel, spec: TrainSpec, stage: str, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (no weight decay on norms and 1-D weights; the patch
    embedding at ``vision_lr_scale`` times the peak) and the schedule: linear warm-up over
    ``warmup`` of the steps, then cosine to ``min_lr_ratio``."""
    peak, min_ratio = spec.resolved_lr(stage)
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (name.startswith(VISION_PREFIX), p.ndim >= 2)
            groups.setdefault(key, []).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": params, "weight_decay": spec.weight_decay if decays else 0.0,
             "lr": peak * (spec.vision_lr_scale if vision else 1.0)}
            for (vision, decays), params in sorted(groups.items())
        ],
        betas=tuple(spec.betas),
        **adamw_implementation([p for params in groups.values() for p in params]),
    )  # fmt: skip
    warmup = max(1, round(spec.warmup * total_steps)) if spec.warmup > 0 else 0

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total_steps, min_ratio)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def adamw_implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is on a CUDA device, else ``{"foreach": True}``."""
    if params and all(p.device.type == "cuda" for p in params):
        return {"fused": True}
    return {"foreach": True}


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at ``step`` (0-based): warm-up then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
