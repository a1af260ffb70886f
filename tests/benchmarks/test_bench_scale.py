"""A dry run of ``benchmarks/bench_scale.py`` at a tiny size: every stage runs end to end and
the table has one row per stage, with the per-row cost column at 1.00 for the first size."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_bench_scale_dry_run():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--sizes", "240",
         "--workers", "2", "--inline"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.split()[:1] in
            (["curate"], ["dedup"], ["pack"])]  # fmt: skip
    assert [r[0] for r in rows] == ["curate", "dedup", "pack"]
    for r in rows:
        assert r[1] == "240" and r[4] == "1.00"  # rows, and the ratio against the first size
        assert float(r[3]) > 0 and float(r[5]) > 50  # CPU-seconds per 1k rows, driver MiB
