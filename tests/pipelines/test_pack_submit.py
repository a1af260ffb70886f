"""`ray job submit` of the pack job to a real local Ray cluster (head started with `ray start`),
with Ray 2.60's token authentication on, as a cluster user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

from neo_data.demo import write_demo_dataset
from neo_data.shards import PackedDataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node on 127.0.0.1 (`ray start --head --block`; stopping that process stops the
    node, so a Ray in the test process is left alone). Yields (dashboard URL, environment)."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this venv's
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         # fixed-default ports (agent 52365, ...) would clash with a Ray already on this machine
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}",
         "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={tmp_path_factory.mktemp('ray')}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while True:  # up when the job API answers (the dashboard starts before its job agent)
        ready = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", url],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if ready.returncode == 0:
            break
        if head.poll() is not None or time.time() > deadline:
            head.terminate()
            pytest.fail(f"the Ray job API did not come up: {ready.stderr[-1000:]}")
        time.sleep(2)
    yield url, env
    head.terminate()
    head.wait(timeout=60)


def test_pack_job_through_ray_job_submit(ray_head, tmp_path):
    url, env = ray_head
    curated = tmp_path / "curated"
    write_demo_dataset(str(curated), captions=60, conversations=30, texts=40, seed=3)
    packed = tmp_path / "packed"
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
        "python", "-m", "pipelines.pack", "--manifest", "manifests/demo.yaml",
        "--set", f"data.curated=[{curated}]", "--set", f"data.packed={packed}",
    ]  # fmt: skip
    deadline = time.time() + 120
    while True:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        # Ray's job agent on the head registers some seconds after the job API answers; until
        # then a submission is refused (nothing runs) with "please try again later".
        if "No available agent" not in run.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "samples in" in run.stdout and "succeeded" in run.stdout + run.stderr
    ds = PackedDataset(str(packed))
    assert ds.index["totals"]["samples_in"] == 130
    assert ds.verify() == []


def test_submit_without_the_token_is_refused(ray_head):
    url, env = ray_head
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "token" in (run.stdout + run.stderr).lower()
