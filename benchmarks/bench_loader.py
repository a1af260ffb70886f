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
row group per pack, the Arrow columns and JPEG images decoded in its thread pool) plus what the
training thread does with a pack before the forward pass (``neo_model.train.loop.model_inputs``).
Each row runs one loader in this process with ``prefetch`` threads; CPU time is the process's
user+system time, so tokens per CPU-second is the cost per core whatever the thread count.

The step columns:

* ``decode only``: the loader threads' work (read, Arrow columns, JPEG -> uint8 RGB).
* ``+ float32 step``: plus the step's host work of the old path: every image normalised to
  float32 on the CPU (``normalize_image``) before its copy -- ``model_inputs`` on the CPU.
* ``+ uint8 step``: plus the step's host work of the trainer now: token tensors and the uint8
  pixels handed to the device, normalised there. On a CUDA machine that is the real device
  (pinned, non-blocking copies); without one the tensors go to the ``meta`` device, which
  keeps the host work (padding, tensor wrapping) and skips the copy a GPU's DMA engine does.

The H100 row: NEO-2.2B tokens/s at 45% MFU of 989 TFLOP/s with the standard FLOP count
(``neo_model.train.flops``) at a 16,384-token pack of the demo's sample mix -- the rate one GPU's
loader must sustain. ``x H100`` = loader tokens per CPU-second / that rate: how many GPUs one
core feeds (the goal: at least 3). ``x old`` = this row's tokens per CPU-second / the float32
row's at the same prefetch.

Rows are :class:`Row` entries and columns :data:`COLUMNS` entries: a new loader variant or a
new column (a shard format, say) is one more entry.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from neo_data.format.ipc import ARROW_COMPRESSIONS
from neo_data.format.schema import SHARD_FORMATS
from neo_data.format.shards import PackedDataset, convert_dataset
from neo_data.loader import LoadedPack, PackStream
from neo_model.config import neo_2_2b
from neo_model.model import NeoChatModel
from neo_model.train.flops import FlopCount
from neo_model.train.loop import model_inputs


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Row:
    """One loader configuration: a stream and what the step does with each pack."""

    name: str
    prefetch: int
    step: Callable[[LoadedPack], object] | None  # the training thread's host work, or None
    pin_memory: bool = False
    result: dict = field(default_factory=dict)


def float32_step(pack: LoadedPack) -> object:
    return model_inputs(pack, torch.device("cpu"), 128)


def uint8_step(device: torch.device) -> Callable[[LoadedPack], object]:
    def step(pack: LoadedPack) -> object:
        inputs = model_inputs(pack, device, 128)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return inputs

    return step


def run(url: str, packs: int, row: Row) -> dict:
    stream = iter(PackStream(url, 0, 1, seed=0, prefetch=row.prefetch, pin_memory=row.pin_memory))
    next(stream)  # open the dataset and warm the pool
    tokens = images = 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(packs):
        p = next(stream)
        tokens += p.num_tokens
        images += len(p.images)
        if row.step is not None:
            row.step(p)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"tokens": tokens, "images": images, "wall": wall, "cpu": cpu,
            "tok_s": tokens / wall, "tok_cpu_s": tokens / max(cpu, 1e-9)}  # fmt: skip


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


# (header, width, format of the row's value); values come from Row.result
COLUMNS: list[tuple[str, int, str]] = [
    ("tokens", 9, ",.0f"),
    ("images", 8, ".0f"),
    ("wall s", 8, ".2f"),
    ("CPU s", 7, ".2f"),
    ("tok/s", 10, ",.0f"),
    ("tok/CPU-s", 11, ",.0f"),
    ("x H100", 8, ".2f"),
    ("x old", 7, ".2f"),
]


def rows(device: torch.device) -> list[Row]:
    """Per prefetch: the loader alone, the old float32 step, the uint8 step."""
    out = []
    for prefetch in (1, 4):
        out += [
            Row(f"prefetch {prefetch}, decode only", prefetch, None),
            Row(f"prefetch {prefetch}, + float32 step", prefetch, float32_step),
            Row(f"prefetch {prefetch}, + uint8 step ({device.type})", prefetch,
                uint8_step(device), pin_memory=device.type == "cuda"),
        ]  # fmt: skip
    return out


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
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("meta")
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
        first = variants[0][0]
        columns = COLUMNS + [(f"vs {first}", 12, ".2f")]
        print(f"{'loader':<52}" + "".join(f"{h:>{w}}" for h, w, _ in columns))
        base: dict[str, float] = {}  # tokens per CPU-s of the first format, per row
        for fmt, url in variants:
            old: dict[int, float] = {}
            for row in rows(device):
                r = run(url, args.packs, row)
                if row.step is float32_step:
                    old[row.prefetch] = r["tok_cpu_s"]
                r["x H100"] = r["tok_cpu_s"] / need
                r["x old"] = r["tok_cpu_s"] / old.get(row.prefetch, float("nan"))
                r["vs"] = r["tok_cpu_s"] / base.setdefault(row.name, r["tok_cpu_s"])
                keys = ["tokens", "images", "wall", "cpu", "tok_s", "tok_cpu_s", "x H100"]
                keys += ["x old", "vs"]
                values = dict(zip([h for h, _, _ in columns], (r[k] for k in keys), strict=True))
                print(
                    f"{fmt + ', ' + row.name:<52}"
                    + "".join(f"{values[h]:>{w}{f}}" for h, w, f in columns)
                )


if __name__ == "__main__":
    main()
