"""The quiet console: a job prints its own lines, Ray's logging goes to a file."""

from __future__ import annotations

import io
import logging
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neo_data.console import (
    MARK,
    CpuMeter,
    LogRouter,
    Progress,
    job_log_file,
    setup_worker_logging,
)

REPO = Path(__file__).resolve().parents[2]
# What Ray itself prints when nothing routes it: Ray Data's executor and progress dumps, the
# C++ core worker, Ray's own logger lines ("INFO worker.py:..."), worker prefixes.
RAY_MARKERS = re.compile(
    r"streaming_executor|logging_progress|Running Dataset|core_worker\.cc|\.cc:\d+|"
    r"INFO worker\.py|\(MapWorker|\(raylet\)|pid=\d+\)|Token authentication"
)


def test_log_router_prints_the_jobs_lines_and_files_every_line():
    log, out, err = io.StringIO(), io.StringIO(), io.StringIO()
    router = LogRouter(log, out, err)
    router({"pid": 7, "actor_name": "RayTrainWorker", "is_err": True,
            "lines": [f"{MARK}step 10  loss 1.2", "[2026 W 1 1] core_worker.cc:1: noise",
                      f"{MARK}warning: disk almost full"]})  # fmt: skip
    assert err.getvalue().splitlines() == ["step 10  loss 1.2", "warning: disk almost full"]
    assert out.getvalue() == ""
    filed = log.getvalue()
    assert "core_worker.cc:1: noise" in filed and "(RayTrainWorker pid=7)" in filed
    assert filed.count("\n") == 3


def test_worker_logging_marks_the_jobs_records_only(capsys):
    setup_worker_logging()
    try:
        logging.getLogger("neo.train").info("step 5")
        logging.getLogger("neo_data.pack.job").warning("slow window")
        logging.getLogger("ray.data").warning("internal")  # not ours: no mark
    finally:
        for name in ("neo", "neo_data", "neo_model", "pipelines"):
            logging.getLogger(name).handlers.clear()
    err = capsys.readouterr().err.splitlines()
    assert f"{MARK}step 5" in err and f"{MARK}warning: slow window" in err
    assert not any(line.startswith(MARK) and "internal" in line for line in err)


def test_progress_line_has_counts_rate_and_eta():
    p = Progress("pack", 200, "windows", out=io.StringIO())
    p.t0 -= 10.0  # ten seconds ago
    line = p.line(50)
    assert line.startswith("pack: 50/200 windows (25%), 5.0/s, ETA 30 s"), line
    assert p.line(200).endswith("s") and "ETA" not in p.line(200)


def test_progress_lines_are_due_every_five_percent_but_not_too_often(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("neo_data.console.time.perf_counter", lambda: clock[0])
    p = Progress("curate", 1000, "rows", out=io.StringIO())
    due = []
    for done in range(10, 1001, 10):  # 10 rows a second for 100 s
        clock[0] += 1.0
        if p.due(done):
            due.append(done)
    # every 5% (50 rows) would be 20 lines; at most one per 5 s leaves every 50 rows here
    assert due == list(range(50, 1001, 50))
    clock[0], due = 0.0, []
    p = Progress("curate", 10, "units", out=io.StringIO())
    for done in range(1, 11):  # a short job: a unit a second
        clock[0] += 1.0
        if p.due(done):
            due.append(done)
    assert due == [5, 10]  # 5 s apart at least, and the end
    clock[0] = 0.0
    p = Progress("slow", 10**6, "rows", out=io.StringIO())
    clock[0] = 61.0
    assert p.due(1)  # no 5% yet, but a minute passed: a heartbeat


def test_job_log_file_is_beside_the_output_never_inside(tmp_path):
    out = tmp_path / "packed" / "pretrain"
    path = job_log_file(str(out), "pack")
    assert path == tmp_path / "packed" / "logs" / "ray-pack.log"
    assert out not in path.parents
    assert job_log_file("s3://bucket/packed", "pack") == Path("runs/logs/ray-pack.log")


def test_cpu_meter_counts_a_finished_child_once():
    meter = CpuMeter(interval=0.02)
    before_self, before_children = meter.seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(4_000_000))"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (
        before_children.ru_utime + before_children.ru_stime
    )
    grew = meter.seconds() - before_self
    meter.stop()
    assert child > 0.1
    # the child's own time (bar its last sampling interval), plus this process's own time
    assert child - 0.1 <= grew <= child + 0.3


@pytest.mark.slow
def test_pack_job_console_is_quiet_and_ray_logs_go_to_the_file(tmp_path):
    from neo_data.synthetic.dataset import write_demo_dataset

    paths = write_demo_dataset(str(tmp_path / "curated"), captions=24, conversations=8, texts=8)
    manifest = tmp_path / "pack.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "quiet", "stage": "pretrain",
        "data": {"curated": paths, "packed": str(tmp_path / "packed" / "quiet")},
        "pack": {"seq_len": 1024, "max_image_tokens": 512},
    }))  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.pack", "--manifest", str(manifest)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-3000:]
    assert "pack quiet: 3 input files" in console  # the job's own progress lines
    assert re.search(r"pack: 40/40 rows \(100%\), [\d.,]+/s, [\d.]+ s; 1/1 windows", console)
    assert f"wrote {tmp_path / 'packed' / 'quiet'}/index.json" in console  # its summary
    log_file = tmp_path / "packed" / "logs" / "ray-pack.log"
    assert f"Ray's own logging: {log_file}" in console
    assert not RAY_MARKERS.search(console), RAY_MARKERS.search(console)
    filed = log_file.read_text()
    assert "Started a local Ray instance" in filed  # Ray's own lines went to the file instead
