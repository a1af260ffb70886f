"""A CPU smoke run of ``benchmarks/bench_vs_hf.py``: the GPU comparison's code path runs end to
end and prints its table, the HF baseline with ratio 1.00 and a NEO row against it."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_bench_vs_hf_runs_on_cpu():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_vs_hf.py"), "--preset", "debug",
         "--device", "cpu", "--seq-len", "512", "--packs", "1", "--repeats", "1", "--warmup", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {line.split("  ")[0]: line.split() for line in run.stdout.splitlines()}
    baseline = next(v for k, v in rows.items() if k.startswith("HF Qwen3, padded"))
    neo = next(v for k, v in rows.items() if k.startswith("NEO, packed rows"))
    assert baseline[-2] == "1.00"  # the ratio column of the baseline
    assert float(neo[-2]) > 0 and "padding)" in run.stdout
