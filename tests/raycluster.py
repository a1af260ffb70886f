"""A real local Ray cluster for tests, as a cluster user runs one: a head (and optionally worker
nodes) started with `ray start` on 127.0.0.1, Ray 2.60's token authentication on, and jobs sent
with `ray job submit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tests.helpers import REPO, free_port

BIN = Path(sys.executable).parent


class RayCluster:
    """``ray start --head --block`` (stopping that process stops its node only, so a Ray in the
    test process is left alone), plus worker nodes on demand.

    ``env`` is laid over the defaults for every ``ray`` command this cluster runs. The default
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every Ray port on 127.0.0.1 but makes Ray refuse
    worker nodes; a multi-node cluster needs ``{"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}``, which
    binds some ports to all addresses, so run it in a network namespace of its own
    (``unshare -n``; see tests/pipelines/two_node_scenario.py). ``log``, when given, collects the
    ``ray start`` processes' output (why a node did not start). Keep ``temp_dir`` short: Ray's
    Unix sockets live under it and their paths must stay below 108 bytes."""

    def __init__(
        self,
        temp_dir: Path,
        num_cpus: int = 2,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ):
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this venv's
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            # a stopped test node exits at once instead of draining for up to 30 s
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            **(env or {}),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.temp_dir = temp_dir
        self.log = log
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
        sink = open(self.log, "a") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *args,
                 *ports, f"--num-cpus={num_cpus}", "--disable-usage-stats"],
                env=self.env, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            if self.log:
                sink.close()  # the child has its own copy
        self.nodes.append(proc)

    def add_worker_node(self, num_cpus: int = 2, resources: str | None = None) -> None:
        """Join a second node to the head (same machine, its own raylet and object store)."""
        args = [f"--address={self.gcs}"]
        if resources:
            args.append(f"--resources={resources}")
        self._start_node(args, num_cpus)

    def state(self, resource: str, *filters: str) -> list[dict]:
        """``ray list <resource> --detail`` (the state API, e.g. ``"nodes"``, ``"actors"``) with
        ``--filter`` expressions such as ``"state=ALIVE"``; dead actors stay listed a while."""
        args = [f"--filter={f}" for f in filters]
        run = subprocess.run(
            [str(BIN / "ray"), "list", resource, "--address", self.url, "--format", "json",
             "--detail", "--limit", "1000", *args],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        why = f"exit {run.returncode}"
        if run.returncode == 0:
            try:
                return json.loads(run.stdout)
            except json.JSONDecodeError as e:  # e.g. a warning instead of the listing
                why = f"output is not JSON ({e})"
        raise RuntimeError(f"ray list {resource}: {why}: {(run.stdout + run.stderr)[-1000:]}")

    def wait_for_nodes(self, count: int, timeout: float = 120) -> list[dict]:
        """Block until ``count`` nodes are alive (a worker node registers some seconds after
        ``ray start``); returns their ``ray list nodes`` records."""
        deadline = time.time() + timeout
        while True:
            try:
                alive = self.state("nodes", "state=ALIVE")
            except RuntimeError as e:  # the state API answers a little after the job API
                alive, why = [], str(e)
            else:
                why = ""
            if len(alive) >= count:
                return alive
            if any(p.poll() is not None for p in self.nodes) or time.time() > deadline:
                raise RuntimeError(
                    f"{len(alive)} of {count} Ray nodes alive {why}"
                    f" (node processes' exit codes: {[p.poll() for p in self.nodes]})"
                )
            time.sleep(2)

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
        """Worker nodes first (newest first), then the head; a node that does not stop within
        60 s is killed, so one stuck node never leaves the others running."""
        for proc in reversed(self.nodes):
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
