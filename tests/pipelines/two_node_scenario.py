"""A training stage as a cluster user runs it, on a two-node Ray cluster, inside a network
namespace of its own. Not a test module: ``tests/pipelines/test_train_submit.py`` runs it as

    unshare --net --pid --fork --mount-proc --kill-child \
        .venv/bin/python -m tests.pipelines.two_node_scenario --packed DIR --out DIR

(``--pid --fork --mount-proc``: a PID namespace too, whose init is this script, so that even if
it is killed the kernel ends every process it started.)

Why a namespace: Ray accepts a second node only with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``,
and then some of its ports bind all addresses. A fresh network namespace has only ``lo``, so
everything started here (moto, the head, the worker node, the job) is reachable through that
loopback only, whatever address it binds.

Steps: bring ``lo`` up; start a moto S3 server on 127.0.0.1 and upload the packed dataset; start
a head and a worker node (``ray start``, token auth, 2 CPUs each); ``ray job submit`` the train
pipeline with two workers of 2 CPUs (so one per node), data and output on S3; record what the
run left on S3 and which node each training worker ran on. Everything is stopped (worker node, head, moto)
even on failure. Writes ``<out>/result.json``; exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

from tests.helpers import free_port
from tests.raycluster import RayCluster

BUCKET = "neo-cluster"
STEPS = 4
MANIFEST = """
name: cluster
stage: pretrain
data: {{curated: [unused], packed: s3://{bucket}/packed}}
pack: {{seq_len: 384, max_pixels: 4096, min_pixels: 1024, buckets: [{{name: all, max_image_tokens: 4}}]}}
train:
  init: {{kind: random, preset: debug}}
  output: s3://{bucket}/run
  steps: {steps}
  log_every: 2
  checkpoint_every: 2
  num_workers: 2
  cpus_per_worker: 2   # each node has 2 CPUs: one worker per node
  trainable: all
"""
SUMMARY_PREFIXES = ("stage ", "checkpoint: ", "export: ")
# Ray Train's worker report, "(RayTrainWorker pid=123) ..." (Ray Train's own node_rank lines are
# no use here: it numbers nodes by IP, and both nodes are 127.0.0.1).
WORKER_PID = re.compile(r"\(RayTrainWorker pid=(\d+)(?:, ip=[^)]*)?\)")


def bring_up_loopback() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def interfaces() -> list[str]:
    """This network namespace's interfaces (``/proc/net/dev`` is per namespace; sysfs is not)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def tcp_listeners() -> list[str]:
    """``host:port`` of every listening TCP socket of this namespace (hex from /proc/net/tcp*)."""
    found = []
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # TCP_LISTEN
                addr, port = local.split(":")
                found.append(f"{_hex_addr(addr)}:{int(port, 16)}")
    return sorted(set(found))


def _hex_addr(addr: str) -> str:
    """/proc/net/tcp* addresses: 32-bit words in host (little-endian) byte order."""
    raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, len(addr), 8))
    ip = ipaddress.ip_address(raw)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def start_moto(stack: ExitStack) -> str:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per S3 request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def s3(endpoint: str):
    """An s3fs client for the moto server; credentials passed explicitly so that the Ray
    nodes' environment carries none: the job gets them through its runtime env only."""
    import s3fs

    return s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        client_kwargs={"endpoint_url": endpoint},
        skip_instance_cache=True,
    )


def names(fs, prefix: str) -> list[str]:
    if not fs.exists(prefix):
        return []
    entries = (p.rstrip("/") for p in fs.ls(prefix, refresh=True))
    return sorted(p.rsplit("/", 1)[-1] for p in entries if p != prefix)  # not the dir marker


def _remove_unless_failed(ray_dir: Path, result: dict) -> None:
    """Ray's logs are kept for a failed run (its path is in the result), removed otherwise."""
    if result.get("job_succeeded"):
        shutil.rmtree(ray_dir, ignore_errors=True)  # best effort: Ray may still hold a file
        del result["ray_temp_dir"]


def worker_nodes(cluster: RayCluster, output: str) -> dict[str, str]:
    """Node id of every Ray Train worker actor of the run (pid -> node id), from Ray's state
    API; only actors whose pid printed training lines in the job output count."""
    printed = set(WORKER_PID.findall(output))
    actors = cluster.state("actors", "class_name=RayTrainWorker")
    return {str(a["pid"]): a["node_id"] for a in actors if str(a.get("pid")) in printed}


def run(packed: Path, work: Path, result: dict) -> None:
    """The scenario; fills ``result`` as it goes, so a failure still reports what happened."""
    with ExitStack() as stack:
        t0 = time.perf_counter()
        endpoint = start_moto(stack)
        fs = s3(endpoint)
        fs.mkdir(BUCKET)
        fs.put(str(packed).rstrip("/") + "/", f"{BUCKET}/packed/", recursive=True)
        result["uploaded_files"] = len(fs.find(f"{BUCKET}/packed"))

        # Ray's sockets live under its temp dir and must stay short (a pytest tmp_path is not).
        ray_dir = Path(tempfile.mkdtemp(prefix="neo-2n-", dir="/tmp"))
        result["ray_temp_dir"] = str(ray_dir)
        stack.callback(_remove_unless_failed, ray_dir, result)
        cluster = RayCluster(
            ray_dir,
            num_cpus=2,
            env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},  # multi-node: see RayCluster
            log=work / "ray_nodes.log",
        )
        stack.callback(cluster.stop)  # runs before moto stops: worker node, then head
        cluster.add_worker_node(num_cpus=2)
        alive = cluster.wait_for_nodes(2)
        result["nodes_alive"] = len(alive)
        result["node_ips"] = sorted(n.get("node_ip") for n in alive)
        result["startup_s"] = round(time.perf_counter() - t0, 1)

        manifest = work / "stage.yaml"
        manifest.write_text(MANIFEST.format(bucket=BUCKET, steps=STEPS))
        t1 = time.perf_counter()
        job = cluster.submit(
            ["python", "-m", "pipelines.train", "--manifest", str(manifest)],
            timeout=300,
            job_env_vars=aws_env(endpoint),
        )
        result["job_s"] = round(time.perf_counter() - t1, 1)
        output = job.stdout + job.stderr
        result["job_returncode"] = job.returncode
        result["job_output_tail"] = output[-6000:]
        result["job_succeeded"] = job.returncode == 0 and "succeeded" in output
        # Ray's memory monitor kills workers when the whole machine nears its memory limit
        # (another program can cause it): said plainly, the failure is then not this scenario's.
        result["ray_oom_kill"] = "killed due to the node running low on memory" in output
        result["summary"] = [  # the pipeline's own closing lines
            line for line in job.stdout.splitlines() if line.startswith(SUMMARY_PREFIXES)
        ]
        (work / "job_output.txt").write_text(output)
        try:
            result["worker_nodes"] = worker_nodes(cluster, output)
        except RuntimeError as e:  # recorded; the S3 checks below still run
            result["worker_nodes_error"] = str(e)
        result["listeners"] = tcp_listeners()  # while the cluster is still up

        last = f"{BUCKET}/run/checkpoints/step-{STEPS:08d}"
        result["checkpoint_files"] = names(fs, last)
        state = f"{last}/trainer_state.json"
        result["trainer_state"] = json.loads(fs.cat(state)) if fs.exists(state) else None
        result["export_files"] = names(fs, f"{BUCKET}/run/export")


def checks(result: dict) -> dict[str, bool]:
    return {
        "job_succeeded": bool(result.get("job_succeeded")),
        "two_nodes": result.get("nodes_alive") == 2,
        "workers_on_two_nodes": len(set(result.get("worker_nodes", {}).values())) == 2
        and len(result.get("worker_nodes", {})) == 2,
        "checkpoint_shards": {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer_state.json"}
        <= set(result.get("checkpoint_files", [])),
        "trainer_state": result.get("trainer_state")
        == {"step": STEPS, "cursor": 2 * STEPS, "world_size": 2},
        "export": {"config.json", "model.safetensors"} <= set(result.get("export_files", [])),
        "loopback_only": result.get("interfaces") == ["lo"],
    }


def _interrupted(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds run(): nodes and moto are stopped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packed", required=True, type=Path, help="a local packed dataset")
    ap.add_argument("--out", required=True, type=Path, help="where result.json and Ray go")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for key in [k for k in os.environ if k.startswith("AWS_") or k == "RAY_ADDRESS"]:
        del os.environ[key]  # a caller's S3 or Ray is not reachable from this namespace
    signal.signal(signal.SIGTERM, _interrupted)
    bring_up_loopback()
    result: dict = {"interfaces": interfaces()}
    t0 = time.perf_counter()
    try:
        run(args.packed, args.out, result)
    except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as e:
        # recorded, not raised: the caller reads the reason from result.json
        result["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
    except KeyboardInterrupt as e:  # SIGTERM or Ctrl-C; run() has stopped what it started
        result["error"] = f"interrupted ({e})"
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["checks"] = checks(result)
    result["ok"] = "error" not in result and all(result["checks"].values())
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "job_output_tail"}, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
