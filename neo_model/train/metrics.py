"""What a training run reports about itself.

* :class:`Meter`: tokens, loss, FLOPs and time summed over the steps since the last log line,
  reduced over ranks into the logged metrics (loss, lr, grad norm, tokens/s, three MFUs).
* :class:`MetricsLog`: where rank 0 writes them -- the console line (:func:`format_metrics`),
  TensorBoard event files in ``<output>/tensorboard`` and ``<output>/metrics.jsonl`` (the last
  two for a local output only; on object stores the console and Ray's reported metrics carry
  them).
* :class:`PackLog`: with ``NEO_TRAIN_PACK_LOG`` set to a local directory, each rank appends the
  packs it trains on (step, position, pack id, dataset, pid) to ``rank-<r>.jsonl``: what the
  tests compare to check data order across ranks, restarts and resumes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist

from neo_data.loader import LoadedPack
from neo_data.manifest.train import TrainSpec
from neo_model.train.flops import FlopCount
from neo_model.train.parallelize import Env

log = logging.getLogger("neo.train")
METRICS_LOG = "metrics.jsonl"  # in a local output: the logged metrics, a JSON line per log step
PACK_LOG_ENV = "NEO_TRAIN_PACK_LOG"  # a local directory: each rank appends the packs it trains on


class Meter:
    """Sums over the steps since the last log line, reduced over ranks at ``collect``.

    The loss stays a device tensor between log lines (summed there, in float64 like a Python
    float): reading it, like the gradient norm, is the one host sync of a log step, not of
    every step or micro-batch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens = self.supervised = self.steps = 0
        self.loss: float | torch.Tensor = 0.0
        self.seconds = 0.0
        self.flops = {"standard": 0, "mask_aware": 0, "frozen_corrected": 0}

    def add(
        self,
        packs: list[LoadedPack],
        flops: FlopCount,
        loss: float | torch.Tensor,
        seconds: float,
    ) -> None:
        """``loss``: this rank's share of the step's global mean (summed over ranks later), a
        float or a 0-d tensor on the training device (not read here)."""
        for p in packs:
            self.tokens += p.num_tokens
            self.supervised += p.num_supervised
            for k, v in flops.step(p.sample_lengths, p.image_sizes).items():
                self.flops[k] += v
        self.loss = self.loss + loss
        self.seconds += seconds
        self.steps += 1

    def collect(self, step, lr, grad_norm, env: Env, peak_tflops: float) -> dict[str, float]:
        """The logged metrics; ``grad_norm`` a float or the tensor ``clip_grad_norm_``
        returned (a DTensor under FSDP2), read here. Collective: every rank calls it."""
        counts = [self.tokens, self.supervised, *self.flops.values()]
        local = torch.cat([
            torch.as_tensor(self.loss, dtype=torch.float64, device=env.device).reshape(1),
            torch.tensor(counts, dtype=torch.float64, device=env.device),
        ])  # fmt: skip
        dist.all_reduce(local)
        seconds = torch.tensor([self.seconds], dtype=torch.float64, device=env.device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        loss, tokens, supervised, *fl = local.tolist()
        secs = max(float(seconds[0]), 1e-9)
        peak = peak_tflops * 1e12 * env.world_size * secs
        metrics = {
            "step": step,
            "loss": loss / self.steps,  # mean of each step's global weighted mean
            "lr": lr,
            "grad_norm": read_scalar(grad_norm),
            "tokens_per_s": tokens / secs,
            "supervised_per_s": supervised / secs,
            "step_seconds": secs / self.steps,
            **{f"mfu_{k}": v / peak for k, v in zip(self.flops, fl, strict=True)},
        }
        self.reset()
        return metrics


def read_scalar(value: float | torch.Tensor) -> float:
    """A logged number as a float: a (D)Tensor is gathered and read (a host sync)."""
    if isinstance(value, torch.Tensor):
        return float(value.full_tensor() if hasattr(value, "full_tensor") else value)
    return float(value)


def format_metrics(m: dict[str, float], total_steps: int | None = None) -> str:
    """The console line of a log step; with ``total_steps``, the step out of the total and the
    ETA at this interval's step time (checkpoint writes not included)."""
    step = int(m["step"])
    where = f"step {step:>6}"
    if total_steps:
        left = max(0, total_steps - step) * m.get("step_seconds", 0.0)
        where = f"step {step:>6}/{total_steps} ({step / total_steps:.0%}, ETA {left:.0f} s)"
    return (
        f"{where}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  "
        f"grad {m['grad_norm']:.3f}  tok/s {m['tokens_per_s']:,.0f}  "
        f"MFU std {m['mfu_standard']:.2%} mask {m['mfu_mask_aware']:.2%} "
        f"frozen {m['mfu_frozen_corrected']:.2%}"
    )


class MetricsLog:
    """Rank 0's outputs of the logged metrics (every other rank writes nothing): the console,
    TensorBoard and ``metrics.jsonl``, the last two for a local ``train.output`` only."""

    def __init__(self, spec: TrainSpec, rank: int) -> None:
        self.rank = rank
        self.total_steps = spec.steps
        self.tensorboard = _tensorboard(spec, rank)
        self.jsonl = _open_metrics_log(spec, rank)

    def write(self, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        log.info(format_metrics(metrics, self.total_steps))
        if self.tensorboard is not None:
            for k, v in metrics.items():
                self.tensorboard.add_scalar(f"train/{k}", v, metrics["step"])
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(metrics) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _open_metrics_log(spec: TrainSpec, rank: int) -> IO[str] | None:
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


class PackLog:
    """This rank's trained packs, a JSON line each, appended to
    ``$NEO_TRAIN_PACK_LOG/rank-<r>.jsonl`` (nothing when the variable is unset). The file stays
    open for the run."""

    def __init__(self, rank: int) -> None:
        where = os.environ.get(PACK_LOG_ENV)
        self.file: IO[str] | None = None
        if where:
            Path(where).mkdir(parents=True, exist_ok=True)
            self.file = open(Path(where) / f"rank-{rank}.jsonl", "a")  # noqa: SIM115

    def write(self, step: int, packs: list[LoadedPack]) -> None:
        if self.file is None:
            return
        for p in packs:
            rec = {
                "step": step,
                "position": p.position,
                "pack_id": p.pack_id,
                "dataset": p.dataset,
                "pid": os.getpid(),
            }
            self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
