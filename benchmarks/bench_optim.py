"""AdamW step time per parameter tensor: the per-tensor loop (``foreach=False``, the trainer's
old setting) against the multi-tensor implementations the trainer uses now
(``neo_model.train.optim``: ``foreach=True``, or ``fused=True`` on CUDA).

    python benchmarks/bench_optim.py [--preset debug] [--device cpu] [--steps 20]

The parameters are a NEO model's stage trainable set (``neo_model.config`` preset and
``--stage``: pre-training trains the patch embedding, the pre-Buffer and the post-LLM's H/W
parts, ``neo_model.train.stages``; built on the meta device, then materialised): as plain tensors, and as FSDP2 DTensor shards (``fully_shard`` per decoder
layer, the patch embedding and the root, on a one-rank gloo/nccl group: what every trainer rank
steps). Gradients are random and fixed; each row times ``opt.step()`` over ``--steps`` steps
after two warm-up steps. Ratio = the ``foreach=False`` row of the same kind / this row.

The per-tensor overhead (Python, dispatch, DTensor unwrapping) is what the multi-tensor paths
remove, so the debug preset on CPU shows it; ``--preset neo_2_2b --device cuda`` is the real
shape (686 tensors, ~9 GB of fp32 state per rank on one GPU).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from neo_model import config as presets
from neo_model.model import NeoChatModel
from neo_model.train.optim import adamw_implementation
from neo_model.train.stages import set_trainable


def make_model(preset: str, stage: str, device: torch.device, sharded: bool) -> NeoChatModel:
    cfg = getattr(presets, preset)()
    with torch.device("meta"):
        model = NeoChatModel(cfg)
    set_trainable(model, cfg, stage, "stage")
    if sharded:
        mesh = dist.device_mesh.init_device_mesh(device.type, (1,))
        for layer in model.language_model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model.vision_model, mesh=mesh)
        fully_shard(model, mesh=mesh)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    for p in trained(model):
        local = p.to_local() if hasattr(p, "to_local") else p
        with torch.no_grad():
            local.normal_(0, 0.02, generator=gen)
        grad = torch.empty_like(local).normal_(0, 1e-3, generator=gen)
        p.grad = (
            torch.distributed.tensor.DTensor.from_local(grad, p.device_mesh, p.placements)
            if hasattr(p, "to_local")
            else grad
        )
    return model


def trained(model: NeoChatModel) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def time_steps(model: NeoChatModel, steps: int, **impl: bool) -> float:
    """Seconds per ``opt.step()`` (AdamW, the trainer's hyper-parameters)."""
    opt = torch.optim.AdamW(trained(model), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, **impl)
    device = trained(model)[0].device
    for _ in range(2):
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="debug", choices=["debug", "neo_2_2b", "neo_9b"])
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "midtrain", "sft"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    print(
        f"AdamW over the {args.preset} preset's {args.stage} trainable set, {device}, "
        f"{args.steps} steps per row"
    )
    print(f"{'parameters':<12}{'implementation':<26}{'tensors':>8}{'ms/step':>10}"
          f"{'us/tensor':>11}{'x faster':>10}")  # fmt: skip
    for sharded in (False, True):
        model = make_model(args.preset, args.stage, device, sharded)
        n = len(trained(model))
        ours = adamw_implementation(trained(model))
        impls = [("foreach=False (old)", {"foreach": False})]
        impls.append((f"{next(iter(ours))}=True (trainer)", ours))
        if "fused" in ours:
            impls.append(("foreach=True", {"foreach": True}))
        base = None
        for name, impl in impls:
            seconds = time_steps(model, args.steps, **impl)
            base = base or seconds
            kind = "DTensor" if sharded else "plain"
            print(f"{kind:<12}{name:<26}{n:>8}{seconds * 1e3:>10.2f}"
                  f"{seconds / n * 1e6:>11.1f}{base / seconds:>10.2f}")  # fmt: skip
        del model
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
