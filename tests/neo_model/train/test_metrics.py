"""What a run reports: tokens/s, loss, MFU over the steps since the last log line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neo_data.loader import TOKEN_COLUMNS, LoadedPack
from neo_model.train.flops import FlopCount
from neo_model.train.metrics import Meter, format_metrics
from neo_model.train.parallelize import Env


def _pack(sample_lengths: list[int], supervised: int, image_sides: list[int]) -> LoadedPack:
    n = sum(sample_lengths)
    return LoadedPack(
        position=0, shard=0, index=0, pack_id="p",
        columns={c: np.zeros(n, dtype=np.int32) for c in TOKEN_COLUMNS},
        cu_seqlens=np.cumsum([0, *sample_lengths]),
        images=[np.zeros((32 * s, 32, 3), dtype=np.uint8) for s in image_sides],
        sample_ids=[str(i) for i in range(len(sample_lengths))], num_supervised=supervised,
    )  # fmt: skip


def test_meter_reports_the_means_and_rates_of_the_steps_since_the_last_log_line(one_rank_group):
    flops = FlopCount(dense=1000, dense_trainable=100, patch=50, attn=2)
    env = Env(rank=0, world_size=1, device=torch.device("cpu"), under_ray=False)
    meter = Meter()
    a, b, c = _pack([10, 20], 12, [2]), _pack([40], 30, []), _pack([5, 5], 4, [1, 1])
    meter.add([a, b], flops, loss=2.0, seconds=0.5)  # a step of two packs
    meter.add([c], flops, loss=4.0, seconds=1.5)
    m = meter.collect(step=2, lr=1e-3, grad_norm=0.7, env=env, peak_tflops=1e-6)
    # per pack: 6 N T + 6 P I + 6 attn pairs (standard: the row as one causal sequence)
    standard = sum(
        6 * 1000 * t + 6 * 50 * i + 6 * 2 * t * (t + 1) // 2 for t, i in ((30, 2), (40, 0), (10, 2))
    )
    assert m == pytest.approx({
        "step": 2, "loss": 3.0, "lr": 1e-3, "grad_norm": 0.7,
        "tokens_per_s": 80 / 2.0, "supervised_per_s": 46 / 2.0, "step_seconds": 1.0,
        "mfu_standard": standard / (1e-6 * 1e12 * 2.0),
        **{
            f"mfu_{k}": sum(flops.step(p.sample_lengths, p.image_sizes)[k] for p in (a, b, c))
            / (1e-6 * 1e12 * 2.0)
            for k in ("mask_aware", "frozen_corrected")
        },
    })  # fmt: skip
    meter.add([b], flops, loss=1.0, seconds=4.0)  # the next log line counts only its own steps
    m = meter.collect(step=3, lr=1e-4, grad_norm=0.1, env=env, peak_tflops=1e-6)
    assert (m["loss"], m["tokens_per_s"], m["supervised_per_s"]) == (1.0, 10.0, 7.5)
    line = format_metrics({**m, "step": 3}, total_steps=10)  # 7 steps left at 4 s each
    assert line.startswith("step      3/10 (30%, ETA 28 s)  loss 1.0000")
    assert format_metrics(m).startswith("step      3  loss")
