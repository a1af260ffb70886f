"""Timing a callable on CPU or CUDA, the way the model benchmarks measure steps.

CUDA work is asynchronous: a timer around Python calls measures the launches, not the kernels.
On CUDA :func:`time_per_call` brackets the calls with CUDA events and waits for the last one;
on CPU it uses ``time.perf_counter``. :func:`free_memory` starts each measurement from an empty
cache and a reset peak, so ``torch.cuda.max_memory_allocated`` afterwards is that run's peak.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the queued work of ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call of ``fn`` over ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def free_memory(device: torch.device) -> None:
    """Collect garbage, empty the CUDA cache and reset its peak statistics."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask,
    scale: float,
    grad_out: torch.Tensor | None = None,
) -> Callable[[], None]:
    """One ``neo_model.attention.attend`` call over fixed inputs, to time: forward + backward
    into ``q`` / ``k`` / ``v`` with ``grad_out``, forward only without (FlexAttention has no
    backward on CPU)."""
    from neo_model.attention import attend

    def step() -> None:
        if grad_out is not None:
            q.grad = k.grad = v.grad = None
            attend(q, k, v, mask, scale).backward(grad_out)
        else:
            with torch.no_grad():
                attend(q, k, v, mask, scale)

    return step
