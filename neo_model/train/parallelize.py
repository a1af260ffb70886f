"""How a training run spreads over ranks: the process group and device of this rank, and the
model's layout on them.

* :func:`setup_distributed`: Ray Train's process group, torchrun's (``WORLD_SIZE`` set), or a
  one-rank gloo group for a plain process; the rank's device.
* :func:`parallelize`: activation checkpointing (``train.activation_checkpointing``: whole
  layers, or selective: :func:`checkpoint_selectively`), ``torch.compile`` per decoder layer
  (CUDA only), and FSDP2 ``fully_shard`` per decoder layer, on the patch embedding and on the
  root -- bf16 parameters with fp32 reductions on GPUs, fp32 on CPU over gloo with an explicit
  CPU device mesh; the mesh flat or hybrid (``train.parallel``, :func:`device_mesh`).
* :func:`autocast`: the forward pass's bf16 autocast on GPUs (none on CPU).
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

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
    """Activation checkpointing, compiled decoder layers (CUDA) and FSDP2 sharding over the
    rank mesh (:func:`device_mesh`: flat, or hybrid), applied in place to a model still on the
    meta device (materialise it afterwards)."""
    layers = model.language_model.model.layers
    model.language_model.model.gradient_checkpointing = spec.activation_checkpointing == "full"
    if spec.activation_checkpointing == "selective":
        for layer in layers:
            checkpoint_selectively(layer)
    mesh = device_mesh(spec, env)
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if env.device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    for layer in layers:
        if spec.compile and env.device.type == "cuda":
            layer.compile()
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model.vision_model, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def mesh_shape(spec: TrainSpec, world_size: int) -> tuple[int, int] | None:
    """``(replicate, shard_size)`` of a hybrid-sharded run, or None for one flat mesh; a
    ``train.parallel`` that does not tile the world is refused with the sizes."""
    par = spec.parallel
    if not par.hybrid:
        return None
    shard, replicate = par.shard_size, par.replicate
    if shard is None:
        shard = world_size // replicate if world_size % replicate == 0 else None
    if replicate is None:
        replicate = world_size // shard if world_size % shard == 0 else None
    if shard is None or replicate is None or shard * replicate != world_size:
        raise ValueError(
            f"train.parallel: shard_size {par.shard_size} x replicate {par.replicate} does not "
            f"make the run's {world_size} ranks (shard_size x replicate must equal the world "
            "size; set one and the other follows)"
        )
    return replicate, shard


def device_mesh(spec: TrainSpec, env: Env) -> DeviceMesh:
    """The ranks' mesh: 1-D over every rank, or 2-D ``("replicate", "shard")`` (HSDP: FSDP2
    shards over the inner dimension, consecutive ranks, i.e. within a node, and all-reduces the
    gradients over the outer one)."""
    shape = mesh_shape(spec, env.world_size)
    if shape is None:
        return init_device_mesh(env.device.type, (env.world_size,))
    return init_device_mesh(env.device.type, shape, mesh_dim_names=("replicate", "shard"))


# Ops whose outputs selective checkpointing keeps: the matmuls (the bulk of a layer's FLOPs) and
# attention (quadratic in the pack length); everything between them is recomputed.
_SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.higher_order.flex_attention,
}


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_selectively(layer: nn.Module) -> None:
    """Wrap ``layer``'s forward (in training) in torch's selective activation checkpoint: the
    outputs of matmuls and attention are kept, every other op's are recomputed in the backward.

    Why this choice: whole-layer checkpointing (``full``) recomputes the layer's matmuls and
    attention, about a third more compute per step; keeping those outputs costs a few tensors of
    ``[L, hidden]``/``[L, intermediate]`` per layer and recomputes only the cheap memory-bound
    ops (RMSNorm, RoPE, SiLU, residual adds), whose saved inputs are most of an un-checkpointed
    layer's activation count. The module and its parameter names stay as they are (the state
    dict and the trainable set are unchanged)."""
    forward = layer.forward

    def checkpointed(*args, **kwargs):
        if not layer.training:
            return forward(*args, **kwargs)
        return checkpoint(
            forward, *args, use_reentrant=False,
            context_fn=functools.partial(create_selective_checkpoint_contexts, _policy),
            **kwargs,
        )  # fmt: skip

    layer.forward = checkpointed


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast for a forward pass on a GPU; nothing on CPU (fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
