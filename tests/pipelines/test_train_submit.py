"""A training stage as a cluster user runs it: `ray job submit` to a real two-node Ray cluster
(a head and a worker node started with `ray start` on 127.0.0.1, token auth), shards and
checkpoints on an S3 server (moto).

Ray accepts a second node only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``, which binds some
ports to every address; so the whole scenario (moto, both nodes, the job) runs in a network
namespace of its own (``unshare -n``, which has only ``lo``): two_node_scenario.py. This test
builds the packed dataset, runs the scenario, and asserts on the result it writes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, UNSHARE
from tests.pipelines import two_node_scenario as scenario

pytestmark = pytest.mark.slow


def _stop(unshare: subprocess.Popen) -> None:
    """SIGTERM to the scenario (``unshare --fork`` does not pass signals on), which then stops
    its nodes and moto; SIGKILL to ``unshare`` if that takes over two minutes."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(int(pid), signal.SIGTERM)
    try:
        unshare.wait(timeout=120)
    except subprocess.TimeoutExpired:
        unshare.kill()
        unshare.wait(timeout=60)


def _run_scenario(packed: str, out: Path, tcp_listeners) -> tuple[int, str, set[str]]:
    """Run the scenario in its namespace; meanwhile watch the host's TCP listeners. Returns the
    exit code, the output, and the host listeners that appeared during the run."""
    before = set(tcp_listeners())
    appeared: set[str] = set()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = out / "scenario.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-m", "tests.pipelines.two_node_scenario", "--packed", packed, "--out", str(out)],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.time() + 400
            while proc.poll() is None and time.time() < deadline:
                appeared |= set(tcp_listeners()) - before
                time.sleep(1)
        finally:
            if proc.poll() is None:
                _stop(proc)
    return proc.returncode, log.read_text(), appeared


def test_train_stage_on_a_two_node_cluster_with_s3(netns, tiny_packed, tmp_path):
    code, output, appeared = _run_scenario(tiny_packed, tmp_path, scenario.tcp_listeners)
    result_file = tmp_path / "result.json"
    assert result_file.exists(), f"scenario exited {code} without a result:\n{output[-6000:]}"
    result = json.loads(result_file.read_text())
    tail = (
        f"\n--- scenario output ---\n{output[-4000:]}\n--- job output ---\n"
        + result.get("job_output_tail", "")[-4000:]
    )
    assert "error" not in result, result["error"] + tail
    oom = (
        "\nRay killed workers: the machine ran low on memory" if result.get("ray_oom_kill") else ""
    )
    assert code == 0 and result["ok"], json.dumps(result["checks"]) + oom + tail

    # The namespace had only its loopback, and the cluster's servers listened there.
    assert result["interfaces"] == ["lo"]
    assert result["listeners"], "no TCP listener seen in the namespace while the cluster ran"
    ns_ports = {addr.rsplit(":", 1)[1] for addr in result["listeners"]}
    leaked = {
        a
        for a in appeared
        if a.rsplit(":", 1)[1] in ns_ports and a.rsplit(":", 1)[0] != "127.0.0.1"
    }
    assert not leaked, f"host listeners on the cluster's ports during the run: {sorted(leaked)}"

    # Two nodes, one training worker on each.
    assert result["nodes_alive"] == 2
    assert len(result["worker_nodes"]) == 2, result["worker_nodes"]
    assert len(set(result["worker_nodes"].values())) == 2, result["worker_nodes"]

    assert result["job_returncode"] == 0 and result["job_succeeded"]
    assert any(
        line.startswith("export:     s3://neo-cluster/run/export") for line in result["summary"]
    ), result["summary"]
    assert any(line.startswith("stage pretrain (cluster): 4 steps") for line in result["summary"])
    # The last checkpoint: both ranks' DCP shards, the DCP metadata, the trainer's cursor.
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer_state.json"} <= set(
        result["checkpoint_files"]
    )
    assert result["trainer_state"] == {"step": 4, "cursor": 8, "world_size": 2}
    assert {"config.json", "model.safetensors"} <= set(result["export_files"])
