"""How a training run spreads over ranks: the process group and device of this rank, and the
model's layout on them.

* :func:`setup_distributed`: Ray Train's process group, torchrun's (``WORLD_SIZE`` set), or a
  one-rank gloo group for a plain process; the rank's device.
* :func:`parallelize`: activation checkpointing, ``torch.compile`` per decoder layer (CUDA
  only), and FSDP2 ``fully_shard`` per decoder layer, on the patch embedding and on the root --
  bf16 parameters with fp32 reductions on GPUs, fp32 on CPU over gloo with an explicit CPU
  device mesh.
* :func:`autocast`: the forward pass's bf16 autocast on GPUs (none on CPU).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from neo_data.manifest.train import TrainSpec
from neo_model.model import NeoChatModel


@dataclass
class Env:
    rank: int
    world_size: int
    device: torch.device
    under_ray: bool


def setup_distributed(spec: TrainSpec) -> Env:
    """The process group (Ray Train's, torchrun's, or a one-rank gloo group) and the device."""
    under_ray = _under_ray()
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ:  # torchrun
            dist.init_process_group("nccl" if spec.use_gpu else "gloo")
        else:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if spec.use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError("train.use_gpu is true but this worker sees no CUDA device")
        if under_ray:
            import ray.train.torch

            device = ray.train.torch.get_device()
        else:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Env(rank, world, device, under_ray)


def _under_ray() -> bool:
    """Whether this process is a Ray Train worker (a Ray worker with a train context)."""
    try:
        import ray
        import ray.train
    except ImportError:
        return False
    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return False
    try:
        ray.train.get_context()
    except RuntimeError:
        return False
    return True


def parallelize(model: NeoChatModel, spec: TrainSpec, env: Env) -> None:
    """Activation checkpointing, compiled decoder layers (CUDA) and FSDP2 sharding over every
    rank, applied in place to a model still on the meta device (materialise it afterwards)."""
    model.language_model.model.gradient_checkpointing = spec.activation_checkpointing
    mesh = dist.device_mesh.init_device_mesh(env.device.type, (env.world_size,))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if env.device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    for layer in model.language_model.model.layers:
        if spec.compile and env.device.type == "cuda":
            layer.compile()
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model.vision_model, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast for a forward pass on a GPU; nothing on CPU (fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
