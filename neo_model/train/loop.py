"""The per-worker training loop of one NEO stage: plain PyTorch, with or without Ray.

``train_worker(manifest_json)`` runs on every rank. Under Ray Train's ``TorchTrainer``
(``neo_model.train.ray_train``) the process group exists already and checkpoints go through
``ray.train.report``; under ``torchrun`` or as one plain process (``python -m
pipelines.train_worker --manifest FILE``) it creates the process group itself and uploads
checkpoints with fsspec. The same code is what a single-GPU benchmark runs.

Per rank:

* the model is built on the meta device, sharded with FSDP2 ``fully_shard`` per decoder layer
  (``neo_model.train.parallelize``), materialised, and loaded by broadcasting rank 0's weights;
* the stage's trainable set is applied (``neo_model.train.stages``), AdamW over it
  (``neo_model.train.optim``);
* packs stream from ``neo_data.loader.PackStream`` from the checkpoint's cursor;
* metrics go to the console, TensorBoard and ``metrics.jsonl`` (``neo_model.train.metrics``),
  checkpoints and the final export through ``neo_model.train.checkpoint``.

Loss normalisation across ranks: a step's loss is ``sum_tokens w_i CE_i / sum_tokens w_i`` over
every supervised token of every micro-batch of every rank (``w`` from ``loss_weighting``). Each
rank knows the global ``sum w`` before its backward passes (one all-reduce of the step's
weights), scales its micro-batch losses by ``world_size / global sum w``, and FSDP's gradient
reduce-scatter averages over ranks: the gradient is exactly that of the global mean, however the
supervised tokens are spread over ranks and micro-batches.

Host syncs: a step reads nothing back from the device. Images cross as uint8 (pinned by the
loader threads on CUDA, copied without blocking, normalised on the device); gradients of all but
a step's last micro-batch stay local (one reduce-scatter per step); the loss is summed on the
device and, with the gradient norm, read only at log steps (``metrics.Meter``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from neo_data.format.storage import join
from neo_data.loader import LoadedPack, PackStream
from neo_data.manifest import Manifest
from neo_data.manifest.train import TrainSpec
from neo_model.attention import sample_ids_from_cu_seqlens
from neo_model.loss import loss_weights
from neo_model.model import NeoChatModel, normalize_image
from neo_model.train.checkpoint import (
    EXPORT_DIR,
    export,
    open_store,
    restore_train_state,
    save_train_state,
)
from neo_model.train.flops import FlopCount
from neo_model.train.metrics import Meter, MetricsLog, PackLog
from neo_model.train.optim import build_optimizer
from neo_model.train.parallelize import autocast, setup_distributed
from neo_model.train.stages import build_stage_model

log = logging.getLogger("neo.train")


def train_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: ``config = {"manifest": <resolved manifest as JSON>}``."""
    manifest = Manifest.model_validate(config["manifest"])
    spec, stage = manifest.train, manifest.stage
    if spec is None:
        raise ValueError(f"manifest {manifest.name!r} has no train: section")
    env = setup_distributed(spec)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(spec.seed)
    model, cfg, trained = build_stage_model(spec, stage, env)
    flops = FlopCount.of(model, cfg)
    opt, sched = build_optimizer(model, spec, stage, spec.steps)
    store = open_store(spec, env)
    step, cursor = 0, 0
    restored = store.restore()
    if restored is not None:
        state = restore_train_state(model, opt, restored)
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
        sources, env.rank, env.world_size, seed=spec.seed, start=cursor, prefetch=4,
        pin_memory=env.device.type == "cuda",
    )  # fmt: skip
    pixels = _pixel_budget(stream_source, sources)
    stream = iter(stream_source)
    pad_to = spec.pad_to_multiple if env.device.type == "cuda" else 1
    pack_log = PackLog(env.rank)
    meter = Meter()
    metrics_log = MetricsLog(spec, env.rank)
    while step < spec.steps:
        t0 = time.perf_counter()
        packs = [next(stream) for _ in range(spec.packs_per_step)]
        loss, grad_norm = train_step(model, packs, spec, env.device, env.world_size, pad_to)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        cursor += env.world_size * spec.packs_per_step
        pack_log.write(step, packs)
        logging_step = step % spec.log_every == 0 or step == spec.steps
        if logging_step and env.device.type == "cuda":
            # the host runs ahead of the GPU between log lines; this step's time includes the
            # queued work, so the interval's sum is its wall time
            torch.cuda.synchronize(env.device)
        meter.add(packs, flops, loss, time.perf_counter() - t0)
        if logging_step:
            metrics = meter.collect(step, sched.get_last_lr()[0], grad_norm, env, spec.peak_tflops)
            metrics_log.write(metrics)
        else:
            metrics = None
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            save_train_state(model, opt, step, cursor, env, store, metrics or {"step": step})
        elif metrics is not None:
            store.report(metrics)
    store.close()
    metrics_log.close()
    # the export carries the pixel budget it was trained with (neo chat and serve use it)
    if pixels:
        cfg = cfg.replace(min_pixels=pixels["min"], max_pixels=pixels["max"])
    export(model, cfg, join(spec.output, EXPORT_DIR), env.rank)
    if env.rank == 0:
        log.info(
            "stage %s done: %d steps; export in %s", stage, step, join(spec.output, EXPORT_DIR)
        )


def train_step(
    model: NeoChatModel,
    packs: list[LoadedPack],
    spec: TrainSpec,
    device: torch.device,
    world_size: int,
    pad_to: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward over this rank's micro-batches (one pack each) of a step, each loss
    scaled by ``world_size / global weight total`` (see the module docstring), then gradient
    clipping. Returns this rank's share of the step's global mean loss (the ranks' shares sum
    to it; a float64 0-d tensor on ``device``) and the gradient norm before clipping (the tensor
    ``clip_grad_norm_`` returns); neither is read here, so a step makes no host sync of its own
    (read them at log steps: ``metrics.read_scalar``). The optimizer step is the caller's.

    Under FSDP2 the gradients of all but the last micro-batch stay local and unsharded (no
    reduce-scatter, parameters not resharded between micro-batches); the last one's backward
    reduce-scatters the sum once. Same gradient as a reduce per micro-batch, up to the order
    of the ranks' float sums; the price is one unsharded fp32 gradient per trained parameter
    while accumulating (``packs_per_step`` > 1 only)."""
    batches = [model_inputs(p, device, pad_to) for p in packs]
    weights = [loss_weights(b["labels"], b["sample_ids"], spec.loss_weighting) for b in batches]
    # the step's weight total over every rank and micro-batch, on the device (no host read)
    total = sum(w.sum() for w in weights).to(torch.float64).reshape(1)
    dist.all_reduce(total)
    total = total[0].clamp_min(1e-6)
    scale = (world_size / total).to(torch.float32)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    sharded = isinstance(model, FSDPModule)
    for k, (b, w) in enumerate(zip(batches, weights, strict=True)):
        last = k == len(batches) - 1
        if sharded:
            model.set_requires_gradient_sync(last)
            model.set_reshard_after_backward(last)
        with autocast(device):
            out = model(
                b["input_ids"], b["t_index"], b["h_index"], b["w_index"], b["image_ordinal"],
                sample_ids=b["sample_ids"], pixel_values=b["pixel_values"],
                labels=b["labels"], loss_weights=w,
            )  # fmt: skip
        part = out.loss
        (part * scale).backward()
        loss_sum += part.detach().to(torch.float64)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.requires_grad], spec.grad_clip
    )
    return loss_sum / total, grad_norm


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
        cols[name] = torch.from_numpy(padded)[None].to(device, non_blocking=True)
    cu_seqlens = torch.as_tensor(np.asarray(pack.cu_seqlens, dtype=np.int64))
    cols["sample_ids"] = sample_ids_from_cu_seqlens(cu_seqlens, length)[None].to(device)
    cols["pixel_values"] = [device_pixels(img, device) for img in pack.images]
    return cols


def device_pixels(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader image (uint8 ``[H, W, 3]``, numpy or a pinned tensor) as the model's normalised
    ``[3, H, W]`` float32 on ``device``: the uint8 bytes are copied (without blocking when
    pinned) and normalised there, off the host."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image if image.flags.writeable else image.copy())
    return normalize_image(image.to(device, non_blocking=True))
