"""A real local Ray cluster for tests, as a cluster user runs one: a head (and optionally worker
nodes) started with `ray start` on 127.0.0.1, Ray 2.60's token authentication on, and jobs sent
with `ray job submit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class RayCluster:
    """``ray start --head --block`` (stopping that process stops its node only, so a Ray in the
    test process is left alone), plus worker nodes on demand."""

    def __init__(self, temp_dir: Path, num_cpus: int = 2):
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this venv's
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.temp_dir = temp_dir
        self.gcs_port = free_port()
        dash = free_port()
        self.url = f"http://127.0.0.1:{dash}"
        self.gcs = f"127.0.0.1:{self.gcs_port}"
        self.nodes: list[subprocess.Popen] = []
        self._start_node(
            ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
             f"--temp-dir={temp_dir}"],
            num_cpus,
        )  # fmt: skip
        self._wait_for_jobs_api()

    def _start_node(self, args: list[str], num_cpus: int) -> None:
        ports = [
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *args, *ports,
             f"--num-cpus={num_cpus}", "--disable-usage-stats"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.nodes.append(proc)

    def add_worker_node(self, num_cpus: int = 2, resources: str | None = None) -> None:
        """Join a second node to the head (same machine, its own raylet and object store)."""
        args = [f"--address={self.gcs}"]
        if resources:
            args.append(f"--resources={resources}")
        self._start_node(args, num_cpus)

    def _wait_for_jobs_api(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while True:  # up when the job API answers (the dashboard starts before its job agent)
            ready = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", self.url],
                env=self.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if ready.returncode == 0:
                return
            if self.nodes[0].poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the Ray job API did not come up: {ready.stderr[-1000:]}")
            time.sleep(2)

    def submit(
        self,
        entrypoint: list[str],
        timeout: float = 600,
        env: dict | None = None,
        job_env_vars: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir <repo> -- <entrypoint>``; waits for the job to end.
        ``job_env_vars`` reach the job's driver and workers through its runtime environment."""
        runtime_env = (
            ["--runtime-env-json", json.dumps({"env_vars": job_env_vars})] if job_env_vars else []
        )
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.url,
               "--working-dir", str(REPO), *runtime_env, "--", *entrypoint]  # fmt: skip
        deadline = time.time() + 120
        while True:
            run = subprocess.run(
                cmd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
            # Ray's job agent on the head registers some seconds after the job API answers;
            # until then a submission is refused (nothing runs) with "please try again later".
            if "No available agent" not in run.stderr or time.time() > deadline:
                return run
            time.sleep(3)

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            proc.terminate()
        for proc in self.nodes:
            proc.wait(timeout=60)
