"""`ray job submit` of the pack job to a real local Ray cluster (head started with `ray start`),
with Ray 2.60's token authentication on, as a cluster user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neo_data.format.shards import PackedDataset
from neo_data.synthetic.dataset import write_demo_dataset

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_pack_job_through_ray_job_submit(ray_cluster, tmp_path):
    curated = tmp_path / "curated"
    write_demo_dataset(str(curated), captions=60, conversations=30, texts=40, seed=3)
    packed = tmp_path / "packed"
    run = ray_cluster.submit(
        ["python", "-m", "pipelines.pack", "--manifest", "manifests/demo.yaml",
         "--set", f"data.curated=[{curated}]", "--set", f"data.packed={packed}"],
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "samples in" in run.stdout and "succeeded" in run.stdout + run.stderr
    ds = PackedDataset(str(packed))
    assert ds.index["totals"]["samples_in"] == 130
    assert ds.verify() == []


def test_submit_without_the_token_is_refused(ray_cluster):
    env = {**ray_cluster.env, "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", ray_cluster.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "token" in (run.stdout + run.stderr).lower()
