"""Loader throughput: real tokens/s per CPU core from packed shards, against what one H100
consumes training NEO-2.2B at the MFU goal, for each shard format on the same packs.

    python benchmarks/bench_loader.py [--data runs/demo/packed/pretrain] [--packs 64]
        [--format parquet arrow] [--arrow-compression zstd lz4 none]

Formats: the packs of ``--data`` rewritten in each format by this neo's writers
(``neo_data.format.shards.convert_dataset``, into a temporary directory on the same disk); per
format its bytes on disk and first-pack latency (median of 5 new ``PackStream``: index, footer
or IPC head, one pack read and decoded; the page cache is warm), then the loader rows, with ``vs <first format>``
= tokens per CPU-second against the first format's row of the same settings (Parquet unless
``--format`` says otherwise).

The loader is the trainer's: ``neo_data.loader.PackStream`` (seeded order, range reads of one
row group per pack, images decoded in its thread pool) plus ``neo_model.train.loop.model_inputs``
(tensors, ImageNet normalisation). Each row runs one loader in this process with ``--prefetch``
threads; CPU time is the process's user+system time, so tokens per CPU-second is the cost per
core whatever the thread count.

The H100 row: NEO-2.2B tokens/s at 45% MFU of 989 TFLOP/s with the standard FLOP count
(``neo_model.train.flops``) at a 16,384-token pack of the demo's sample mix -- the rate one GPU's
loader must sustain. Ratio = loader tokens/s per core / that rate: the fraction of one GPU
that one core feeds (1.0 = one core per GPU suffices).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import torch

from neo_data.format.ipc import ARROW_COMPRESSIONS
from neo_data.format.schema import SHARD_FORMATS
from neo_data.format.shards import PackedDataset, convert_dataset
from neo_data.loader import PackStream
from neo_model.config import neo_2_2b
from neo_model.model import NeoChatModel
from neo_model.train.flops import FlopCount
from neo_model.train.loop import model_inputs


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(url: str, packs: int, prefetch: int, tensors: bool) -> tuple[int, int, float, float]:
    stream = iter(PackStream(url, 0, 1, seed=0, prefetch=prefetch))
    next(stream)  # open the dataset and warm the pool
    tokens = images = 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(packs):
        p = next(stream)
        tokens += p.num_tokens
        images += len(p.images)
        if tensors:
            model_inputs(p, torch.device("cpu"), 128)
    return tokens, images, time.perf_counter() - t0, cpu_seconds() - c0


def same_packs(url: str, formats: list[str], codecs: list[str], tmp: str) -> list[tuple[str, str]]:
    """``(name, url)`` of the packs at ``url`` rewritten in each format (arrow once per codec)
    under ``tmp`` by this neo's writers, so every row reads the same packs written the same way."""
    src = PackedDataset(url)
    out = []
    for fmt in formats:
        for codec in codecs if fmt == "arrow" else [None]:
            name = fmt if codec is None else f"{fmt} {codec}"
            dst = os.path.join(tmp, name.replace(" ", "-"))
            convert_dataset(src, dst, fmt, codec)
            out.append((name, dst))
    return out


def first_pack_s(url: str, repeats: int = 5) -> float:
    """Median seconds from a new ``PackStream`` to its first pack."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        next(iter(PackStream(url, 0, 1, seed=0, prefetch=1)))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def h100_tokens_per_s(mfu: float = 0.45, seq: int = 16_384) -> float:
    cfg = neo_2_2b()
    with torch.device("meta"):
        model = NeoChatModel(cfg)
    flops = FlopCount.of(model, cfg)
    # a 16k pack of ~512-token samples with one 256-token image each (the demo mix, scaled)
    lengths = [512] * (seq // 512)
    per_pack = flops.step(lengths, [256] * len(lengths))["standard"]
    return mfu * 989e12 / (per_pack / seq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/demo/packed/pretrain")
    ap.add_argument("--packs", type=int, default=64)
    ap.add_argument("--format", nargs="+", default=list(SHARD_FORMATS), choices=SHARD_FORMATS)
    ap.add_argument(
        "--arrow-compression",
        nargs="+",
        default=list(ARROW_COMPRESSIONS),
        choices=ARROW_COMPRESSIONS,
    )
    args = ap.parse_args()
    need = h100_tokens_per_s()
    print(f"loader on {args.data}, {args.packs} packs per row, {os.cpu_count()} CPUs here")
    print(f"one H100 at 45% MFU on NEO-2.2B (16k packs) consumes {need:,.0f} tokens/s\n")
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        variants = same_packs(args.data, args.format, args.arrow_compression, tmp)
        print(f"{'format':<14}{'bytes on disk':>15}{'first pack ms':>15}")
        for name, url in variants:
            size = PackedDataset(url).index["totals"]["bytes"]
            print(f"{name:<14}{size:>15,}{1000 * first_pack_s(url):>15.1f}")
        print()
        head = f"{'loader':<48}{'tokens':>9}{'images':>8}{'wall s':>8}{'CPU s':>7}"
        print(head + f"{'tok/s':>10}{'tok/CPU-s':>11}{'x H100':>8}{'vs ' + variants[0][0]:>14}")
        base: dict[tuple[int, bool], float] = {}  # tokens per CPU-s of the first format
        for fmt, url in variants:
            for prefetch in (1, 4):
                for tensors in (False, True):
                    name = f"{fmt}, prefetch {prefetch}, "
                    name += "+ tensors" if tensors else "decode only"
                    tokens, images, wall, cpu = run(url, args.packs, prefetch, tensors)
                    per_core = tokens / max(cpu, 1e-9)
                    ref = base.setdefault((prefetch, tensors), per_core)
                    print(
                        f"{name:<48}{tokens:>9,}{images:>8}{wall:>8.2f}{cpu:>7.2f}"
                        f"{tokens / wall:>10,.0f}{per_core:>11,.0f}{per_core / need:>8.2f}"
                        f"{per_core / ref:>14.2f}"
                    )


if __name__ == "__main__":
    main()
