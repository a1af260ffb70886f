"""Block-mask build time and peak memory: NEO's FlexAttention mask, the former path against the
new one, in the same run.

    python benchmarks/bench_mask.py [--sizes 8192 16384 32768 65536] [--old-max 32768]

The row: a 64-sample pack (sample lengths drawn around ``L / 64``, seeded), each sample one or
two image runs (square grids of 64-256 tokens, about 40% of the tokens), the rest text; the
sample ids and image ordinals the trainer passes to ``neo_model.attention.build_mask``.

* old: ``_block_mask_dense``, the former ``build_mask(..., "flex")``: uncompiled
  ``create_block_mask``, which evaluates the mask on all ``L x L`` pairs.
* new: ``build_mask(..., "flex")`` = ``block_mask_from_runs``, read off the sample and image runs.

Time: the median of ``--repeat`` builds (old: one build above 8k tokens). Memory: the growth of
the process's peak resident set during one build (``VmHWM`` after resetting it through
``/proc/self/clear_refs``, minus ``VmRSS`` before), so it counts every allocation torch makes,
not only Python's. The new path's build is measured in a fresh process (``--child``), its first
build there (first-call costs included): in this process its few MiB would reuse pages that
earlier builds left resident and show as 0. The old path runs up to ``--old-max`` tokens (at 64k it needs ~40 GiB; the
machine is shared). Where both ran, the two masks are compared field by field.

Goal (issue 12): at 32,768 tokens the new build takes < 0.2 s and < 256 MiB on this CPU.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from neo_model.attention import _block_mask_dense, build_mask

FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")
MIB = 2**20


def pack_row(length: int, samples: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, length]`` sample ids and image ordinals of a ``samples``-sample pack with images."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, samples)
    lengths = np.floor(weights / weights.sum() * length).astype(int)
    lengths[-1] += length - lengths.sum()
    ids = np.repeat(np.arange(samples), lengths)
    ordinal = np.full(length, -1)
    start, image = 0, 0
    for n in lengths:
        images = 1 + int(rng.integers(0, 2))
        side = int(np.sqrt(0.4 * n / images))
        offset = start + 16
        for _ in range(images):
            size = max(1, side) ** 2
            if offset + size + 8 > start + n:
                break
            ordinal[offset : offset + size] = image
            image += 1
            offset += size + 24
        start += n
    return torch.from_numpy(ids)[None], torch.from_numpy(ordinal)[None]


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_growth(fn: Callable[[], object]) -> float:
    """Bytes the process's peak RSS grows by while ``fn`` runs (its result dropped after)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    result = fn()
    peak = _status("VmHWM")
    del result
    gc.collect()
    return peak - before


def child_growth(length: int, threads: int) -> float:
    """:func:`peak_growth` of the new path's first build in a fresh process."""
    cmd = [sys.executable, __file__, "--child", str(length), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def same(a, b) -> bool:
    return a.seq_lengths == b.seq_lengths and all(
        torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--old-max", type=int, default=32768, help="largest size for the old path")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both paths)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one new build's growth
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        ids, ordinal = pack_row(args.child)
        print(peak_growth(lambda: build_mask(ids, ordinal, "flex")))
        return
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s); 64-sample packs with images")
    header = (
        f"{'tokens':>7} {'images':>6} {'old s':>8} {'new s':>8} {'speed-up':>9} "
        f"{'old MiB':>8} {'new MiB':>8} {'mem ratio':>9}  equal"
    )
    print(header)
    print("-" * len(header))
    notes = []
    goal = None
    for length in args.sizes:
        ids, ordinal = pack_row(length)
        images = int(ordinal.max()) + 1

        def new(ids=ids, ordinal=ordinal):
            return build_mask(ids, ordinal, "flex")

        def old(ids=ids, ordinal=ordinal):
            return _block_mask_dense(ids, ordinal)

        new()  # warm-up (first-call costs)
        new_s, new_mem = seconds(new, args.repeat), child_growth(length, args.threads)
        cells = [f"{'-':>8}", f"{new_s:8.4f}", f"{'-':>9}", f"{'-':>8}", f"{new_mem / MIB:8.2f}"]
        cells.append(f"{'-':>9}")
        equal = "-"
        if length <= args.old_max:
            old_s = seconds(old, 1 if length > 8192 else min(3, args.repeat))
            old_mem = peak_growth(old)
            equal = "yes" if same(new(), old()) else "NO"
            cells = [
                f"{old_s:8.3f}",
                f"{new_s:8.4f}",
                f"{old_s / new_s:8.0f}x",
                f"{old_mem / MIB:8.1f}",
                f"{new_mem / MIB:8.2f}",
                f"{old_mem / max(new_mem, MIB):8.0f}x",
            ]
        else:
            notes.append(f"{length}: old path skipped (> --old-max {args.old_max}; O(L^2) memory)")
        print(f"{length:>7} {images:>6} {' '.join(cells)}  {equal}")
        if length == 32768:
            goal = (new_s, new_mem)
    for note in notes:
        print("note:", note)
    print("memory: peak RSS growth during one build (VmHWM reset via /proc/self/clear_refs)")
    if goal is not None:
        ok = goal[0] < 0.2 and goal[1] < 256 * MIB
        print(
            f"goal at 32,768 tokens: < 0.2 s and < 256 MiB -> {goal[0]:.4f} s, "
            f"{goal[1] / MIB:.1f} MiB: {'met' if ok else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
