"""The per-worker training loop of one NEO stage: plain PyTorch, with or without Ray.

``train_worker(manifest_json)`` runs on every rank. Under Ray Train's ``TorchTrainer``
(``neo_model.train.ray_train``) the process group exists already and checkpoints go through
``ray.train.report``; under ``torchrun`` or as one plain process (``python -m neo_model.train.loop
--manifest FILE``) it creates the process group itself and uploads checkpoints with fsspec. The
same code is what a single-GPU benchmark runs.

Per rank:

* the model is built on the meta device, sharded with FSDP2 ``fully_shard`` per decoder layer
  (bf16 parameters / fp32 reductions on GPUs; fp32 on CPU over gloo with an explicit CPU device
  mesh), materialised, and loaded by broadcasting rank 0's weights;
* the stage's trainable set is applied (``neo_model.train.stages``), AdamW over it;
* packs stream from ``neo_data.loader.PackStream`` from the checkpoint's cursor.

Loss normalisation across ranks: a step's loss is ``sum_tokens w_i CE_i / sum_tokens w_i`` over
every supervised token of every micro-batch of every rank (``w`` from ``loss_weighting``). Each
rank knows the global ``sum w`` before its backward passes (one all-reduce of the step's
weights), scales its micro-batch losses by ``world_size / global sum w``, and FSDP's gradient
reduce-scatter averages over ranks: the gradient is exactly that of the global mean, however the
supervised tokens are spread over ranks and micro-batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from neo_data.format.storage import is_local, join, url_to_fs
from neo_data.loader import LoadedPack, PackStream
from neo_data.manifest.model import Manifest
from neo_data.manifest.train import TrainSpec
from neo_model import config as presets
from neo_model.attention import PAD_SAMPLE
from neo_model.config import NeoConfig
from neo_model.loss import loss_weights
from neo_model.model import NeoChatModel, normalize_image
from neo_model.train.checkpoint import (
    TRAINER_STATE,
    CheckpointStore,
    FsspecStore,
    RayStore,
    get_dir,
    put_dir,
)
from neo_model.train.flops import FlopCount
from neo_model.train.stages import set_trainable
from neo_model.weights import _read_config, from_pretrained, from_qwen3, save_pretrained

log = logging.getLogger("neo.train")
EXPORT_DIR = "export"
CHECKPOINT_DIR = "checkpoints"
METRICS_LOG = "metrics.jsonl"  # in a local output: the logged metrics, a JSON line per log step
PACK_LOG_ENV = "NEO_TRAIN_PACK_LOG"  # a local directory: each rank appends the packs it trains on


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


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


def stage_config(spec: TrainSpec) -> NeoConfig:
    init = spec.init
    if init.kind == "random":
        return getattr(presets, init.preset)()
    local = get_dir(init.path)
    if init.kind == "qwen3":
        return NeoConfig.from_qwen3(_read_config(local), init.pre_buffer_layers)
    return NeoConfig.from_released(_read_config(local))


def initial_state(spec: TrainSpec, config: NeoConfig) -> dict[str, torch.Tensor]:
    """Rank 0's full starting weights (fp32, CPU)."""
    init = spec.init
    if init.kind == "random":
        torch.manual_seed(spec.seed)
        model = NeoChatModel(config)
    elif init.kind == "qwen3":
        model = from_qwen3(
            get_dir(init.path), num_extra_layers=init.pre_buffer_layers, seed=spec.seed
        )
    else:
        model = from_pretrained(get_dir(init.path))
    return model.state_dict()


def build_model(spec: TrainSpec, stage: str, env: Env) -> tuple[NeoChatModel, NeoConfig, list[str]]:
    """Meta-device model -> stage trainable set -> FSDP2 per layer -> materialised -> weights
    broadcast from rank 0."""
    config = stage_config(spec)
    with torch.device("meta"):
        model = NeoChatModel(config)
    trained = set_trainable(model, config, stage, spec.trainable)
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
    model.to_empty(device=env.device)
    full = initial_state(spec, config) if env.rank == 0 else {}
    set_model_state_dict(
        model,
        full,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False),
    )
    return model, config, trained


def build_optimizer(model: NeoChatModel, spec: TrainSpec, stage: str, total_steps: int):
    """AdamW over the trainable parameters (no weight decay on norms and 1-D weights) and the
    schedule: linear warm-up over ``warmup`` of the steps, then cosine to ``min_lr_ratio``."""
    peak, min_ratio = spec.resolved_lr(stage)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=peak, betas=tuple(spec.betas), foreach=False
    )
    warmup = max(1, round(spec.warmup * total_steps)) if spec.warmup > 0 else 0

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total_steps, min_ratio)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at ``step`` (0-based): warm-up then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def model_inputs(pack: LoadedPack, device: torch.device, pad_to: int) -> dict[str, Any]:
    """One pack as the model's ``[1, L]`` inputs, padded to a multiple of ``pad_to`` (padding
    is its own sample in the mask and carries no labels)."""
    n = pack.num_tokens
    length = -(-n // pad_to) * pad_to
    cols = {}
    for name, arr in pack.columns.items():
        fill = -100 if name == "labels" else (-1 if name == "image_ordinal" else 0)
        padded = np.full(length, fill, dtype=np.int64)
        padded[:n] = arr
        cols[name] = torch.from_numpy(padded)[None].to(device)
    sample_ids = np.full(length, PAD_SAMPLE, dtype=np.int64)
    sample_ids[:n] = np.repeat(np.arange(len(pack.cu_seqlens) - 1), np.diff(pack.cu_seqlens))
    cols["sample_ids"] = torch.from_numpy(sample_ids)[None].to(device)
    cols["pixel_values"] = [normalize_image(img).to(device) for img in pack.images]
    return cols


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def save_checkpoint(model, opt, step: int, cursor: int, env: Env, store: CheckpointStore, metrics):
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    local = Path(tempfile.mkdtemp(prefix=f"neo-ckpt-{step}-r{env.rank}-"))
    dcp.save(state, checkpoint_id=str(local))
    if env.rank == 0:
        trainer_state = {"step": step, "cursor": cursor, "world_size": env.world_size}
        (local / TRAINER_STATE).write_text(json.dumps(trainer_state))
    store.publish(local, step, metrics)


def load_checkpoint(model, opt, url: str) -> dict:
    """Load a DCP checkpoint in place (local path or ``s3://``: each rank reads its items by
    byte range); returns its trainer state."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    fs, root = url_to_fs(url)
    if is_local(fs):
        dcp.load(state, checkpoint_id=root)
    else:
        # torch 2.13 keeps DCP's fsspec reader here (no public re-export)
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        dcp.load(state, storage_reader=FsspecReader(url))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    return json.loads(fs.cat_file(join(root, TRAINER_STATE)))


def export(model: NeoChatModel, config: NeoConfig, url: str, rank: int) -> None:
    """The trained weights in the released NEO layout at ``url`` (collective; rank 0 writes)."""
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        plain = NeoChatModel(config)
        plain.load_state_dict({k: v.float() for k, v in full.items()})
        with tempfile.TemporaryDirectory(prefix="neo-export-") as tmp:
            save_pretrained(plain, tmp)
            put_dir(Path(tmp), url)
    dist.barrier()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: ``config = {"manifest": <resolved manifest as JSON>}``."""
    manifest = Manifest.model_validate(config["manifest"])
    spec, stage = manifest.train, manifest.stage
    if spec is None:
        raise ValueError(f"manifest {manifest.name!r} has no train: section")
    env = setup_distributed(spec)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(spec.seed)
    model, cfg, trained = build_model(spec, stage, env)
    flops = FlopCount.of(model, cfg)
    opt, sched = build_optimizer(model, spec, stage, spec.steps)
    store: CheckpointStore = (
        RayStore()
        if env.under_ray
        else FsspecStore(
            join(spec.output, CHECKPOINT_DIR), env.rank, env.world_size, spec.keep_checkpoints
        )
    )
    step, cursor = 0, 0
    restored = store.restore()
    if restored is not None:
        state = load_checkpoint(model, opt, restored)
        step, cursor = state["step"], state["cursor"]
        sched.last_epoch = step - 1
        sched.step()
    if env.rank == 0:
        log.info(
            "stage %s: %d ranks on %s, %d trainable tensors, %s from step %d (cursor %d)",
            stage, env.world_size, env.device, len(trained), manifest.name, step, cursor,
        )  # fmt: skip
    sources = spec.sources(manifest.data.packed)
    stream_source = PackStream(
        sources, env.rank, env.world_size, seed=spec.seed, start=cursor, prefetch=4
    )
    pixels = _pixel_budget(stream_source, sources)
    stream = iter(stream_source)
    pad_to = spec.pad_to_multiple if env.device.type == "cuda" else 1
    pack_log = _open_pack_log(env.rank)
    meter = Meter()
    tb = _tensorboard(spec, env.rank)
    metrics_log = _open_metrics_log(spec, env.rank)
    while step < spec.steps:
        t0 = time.perf_counter()
        packs = [next(stream) for _ in range(spec.packs_per_step)]
        batches = [model_inputs(p, env.device, pad_to) for p in packs]
        weights = [loss_weights(b["labels"], b["sample_ids"], spec.loss_weighting) for b in batches]
        total = torch.tensor([float(sum(w.sum() for w in weights))], dtype=torch.float64)
        dist.all_reduce(total)  # the step's weight total over every rank and micro-batch
        total = max(float(total), 1e-6)
        scale = env.world_size / total
        loss_sum = 0.0
        for b, w in zip(batches, weights, strict=True):
            with _autocast(env.device):
                out = model(
                    b["input_ids"], b["t_index"], b["h_index"], b["w_index"], b["image_ordinal"],
                    sample_ids=b["sample_ids"], pixel_values=b["pixel_values"],
                    labels=b["labels"], loss_weights=w,
                )  # fmt: skip
            part = out.loss
            (part * scale).backward()
            loss_sum += float(part.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], spec.grad_clip
        )
        grad_norm = float(
            grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        )
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        cursor += env.world_size * spec.packs_per_step
        if pack_log is not None:
            for p in packs:
                rec = {
                    "step": step,
                    "position": p.position,
                    "pack_id": p.pack_id,
                    "dataset": p.dataset,
                    "pid": os.getpid(),
                }
                pack_log.write(json.dumps(rec) + "\n")
            pack_log.flush()
        meter.add(packs, flops, loss_sum / total, time.perf_counter() - t0)
        if step % spec.log_every == 0 or step == spec.steps:
            metrics = meter.collect(step, sched.get_last_lr()[0], grad_norm, env, spec.peak_tflops)
            if env.rank == 0:
                log.info(format_metrics(metrics))
                if tb is not None:
                    for k, v in metrics.items():
                        tb.add_scalar(f"train/{k}", v, step)
                if metrics_log is not None:
                    metrics_log.write(json.dumps(metrics) + "\n")
                    metrics_log.flush()
        else:
            metrics = None
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            save_checkpoint(model, opt, step, cursor, env, store, metrics or {"step": step})
        elif metrics is not None:
            store.report(metrics)
    store.close()
    if tb is not None:
        tb.close()
    if metrics_log is not None:
        metrics_log.close()
    # the export carries the pixel budget it was trained with (neo chat and serve use it)
    if pixels:
        cfg = cfg.replace(min_pixels=pixels["min"], max_pixels=pixels["max"])
    export(model, cfg, join(spec.output, EXPORT_DIR), env.rank)
    if env.rank == 0:
        log.info(
            "stage %s done: %d steps; export in %s", stage, step, join(spec.output, EXPORT_DIR)
        )


def _pixel_budget(stream: PackStream, sources: list[tuple[str, float]]) -> dict:
    """The pixel budget the packs were made with (the export carries it); the datasets of a
    mixture must agree, as one model resizes images one way at inference."""
    budgets = [ds.index.get("pixels", {}) for ds in stream.datasets]
    for (url, _), budget in zip(sources[1:], budgets[1:], strict=True):
        if budget != budgets[0]:
            raise ValueError(
                f"train.data: {url} was packed with pixels {budget}, {sources[0][0]} with "
                f"{budgets[0]}; the datasets of a mixture need the same pack.min_pixels and "
                "pack.max_pixels"
            )
    return budgets[0]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _open_pack_log(rank: int):
    where = os.environ.get(PACK_LOG_ENV)
    if not where:
        return None
    Path(where).mkdir(parents=True, exist_ok=True)
    return open(Path(where) / f"rank-{rank}.jsonl", "a")  # noqa: SIM115 -- lives for the run


def _open_metrics_log(spec: TrainSpec, rank: int):
    """``<output>/metrics.jsonl``: rank 0's log lines as JSON, one per ``log_every`` steps (local
    output only, like TensorBoard). A resumed run appends; the last line of a step wins."""
    if rank != 0 or "://" in spec.output:
        return None
    Path(spec.output).mkdir(parents=True, exist_ok=True)
    return open(Path(spec.output) / METRICS_LOG, "a")  # noqa: SIM115 -- lives for the run


def _tensorboard(spec: TrainSpec, rank: int):
    """TensorBoard event files in ``<output>/tensorboard`` (local output only; on object stores
    the console and Ray's reported metrics carry them)."""
    if rank != 0 or "://" in spec.output:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(Path(spec.output) / "tensorboard"))


class Meter:
    """Sums over the steps since the last log line, reduced over ranks at ``collect``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens = self.supervised = self.steps = 0
        self.loss = self.seconds = 0.0
        self.flops = {"standard": 0, "mask_aware": 0, "frozen_corrected": 0}

    def add(self, packs: list[LoadedPack], flops: FlopCount, loss: float, seconds: float) -> None:
        """``loss``: this rank's share of the step's global mean (summed over ranks later)."""
        for p in packs:
            self.tokens += p.num_tokens
            self.supervised += p.num_supervised
            for k, v in flops.step(p.sample_lengths, p.image_sizes).items():
                self.flops[k] += v
        self.loss += loss
        self.seconds += seconds
        self.steps += 1

    def collect(self, step, lr, grad_norm, env: Env, peak_tflops: float) -> dict[str, float]:
        local = torch.tensor(
            [self.tokens, self.supervised, self.loss, *self.flops.values()], dtype=torch.float64
        )
        dist.all_reduce(local)
        seconds = torch.tensor([self.seconds], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        tokens, supervised, loss, *fl = local.tolist()
        secs = max(float(seconds[0]), 1e-9)
        peak = peak_tflops * 1e12 * env.world_size * secs
        metrics = {
            "step": step,
            "loss": loss / self.steps,  # mean of each step's global weighted mean
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / secs,
            "supervised_per_s": supervised / secs,
            **{f"mfu_{k}": v / peak for k, v in zip(self.flops, fl, strict=True)},
        }
        self.reset()
        return metrics


def format_metrics(m: dict[str, float]) -> str:
    return (
        f"step {int(m['step']):>6}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  "
        f"grad {m['grad_norm']:.3f}  tok/s {m['tokens_per_s']:,.0f}  "
        f"MFU std {m['mfu_standard']:.2%} mask {m['mfu_mask_aware']:.2%} "
        f"frozen {m['mfu_frozen_corrected']:.2%}"
    )


def main(argv: list[str] | None = None) -> int:
    """One process or ``torchrun``: ``python -m neo_model.train.loop --manifest FILE [--set K=V]``."""
    from neo_data.manifest.model import load_manifest, parse_overrides

    ap = argparse.ArgumentParser(prog="python -m neo_model.train.loop")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    manifest = load_manifest(args.manifest, parse_overrides(args.set))
    train_worker({"manifest": manifest.model_dump(mode="json")})
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
