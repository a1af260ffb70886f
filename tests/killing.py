"""The machinery the kill -9 scenarios share (``tests/neo_data/{curate,recaption,pack}/
kill_scenario.py``): start a job in its own session, SIGKILL that whole session (the driver, the
local Ray it started, Ray's workers: only what the scenario started), kill it a moment after it
has written its m-th file, and compare an output with the uninterrupted run's -- every file of
the compared folders byte for byte, the run's JSON document but its time fields, no temporary
file left anywhere."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.helpers import REPO


def environment(**extra: str) -> dict[str, str]:
    """The jobs' environment: this one without ``RAY_ADDRESS`` (each job starts its own local
    Ray), no usage stats, a small object store, the repository importable."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", NEO_RAY_OBJECT_STORE_BYTES=str(200 << 20))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``cmd`` in a new session (so that :func:`kill_session` finds all it starts), its stdout and
    stderr appended to ``log``."""
    with open(log, "ab") as sink:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env or environment(), stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (the job's driver started it: Ray's own processes stay in
    it)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # fields after "(comm)": state, ppid, pgrp, session
            members.append(int(stat.parent.name))
    return members


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of ``proc``'s session, then reap ``proc``."""
    for _ in range(20):
        members = session_members(proc.pid)
        if not members:
            break
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for the job; True when it ended by itself, False when killed at ``timeout``. Either
    way its session is gone after (a finished driver may leave Ray processes behind)."""
    try:
        proc.wait(timeout=timeout)
        ended = True
    except subprocess.TimeoutExpired:
        ended = False
    kill_session(proc)
    return ended


def written_since(root: Path, t0: float) -> int:
    """Files under ``root`` written (created or replaced) since wall-clock time ``t0``."""
    n = 0
    for p in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if p.is_file() and ".tmp-" not in p.name and p.stat().st_mtime >= t0:
                n += 1
    return n


def run_job(
    cmd: list[str],
    log: Path,
    output: Path,
    kill_at: tuple[int, float] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> str:
    """Run the job; with ``kill_at = (m, jitter)``, SIGKILL it ``jitter`` seconds after it has
    written its ``m``-th file under ``output`` (m = 0: ``jitter`` seconds after the start, mid
    start-up). Returns how it ended: ``killed``, ``finished`` or ``exit N``."""
    t0, since = time.time(), None
    proc = start(cmd, log, env)
    while proc.poll() is None and time.time() - t0 < timeout:
        if kill_at is not None:
            m, jitter = kill_at
            if since is None and (m == 0 or written_since(output, t0) >= m):
                since = time.time()
            if since is not None and time.time() - since >= jitter:
                kill_session(proc)
                return "killed"
        time.sleep(0.02)
    kill_session(proc)
    return "finished" if proc.returncode == 0 else f"exit {proc.returncode}"


def tree(root: Path, folders: Iterable[str]) -> dict[str, bytes]:
    """Every file under ``root/<folder>``, by path relative to ``root``."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def compare(
    ref: Path, out: Path, folders: Iterable[str], document: str, volatile: Iterable[str]
) -> list[str]:
    """How ``out`` differs from the uninterrupted ``ref``: files of ``folders`` byte for byte,
    the JSON ``document`` (``report.json``, ``index.json``) but its ``volatile`` keys, and any
    temporary file left under ``out``. Empty when they agree."""
    folders = list(folders)
    a, b = tree(ref, folders), tree(out, folders)
    problems = []
    for name in sorted(a.keys() | b.keys()):
        if name not in b:
            problems.append(f"{name}: missing after the kills")
        elif name not in a:
            problems.append(f"{name}: not in the uninterrupted run")
        elif a[name] != b[name]:
            problems.append(f"{name}: bytes differ")
    if not (out / document).exists():
        problems.append(f"{document}: missing after the kills")
    else:
        da, db = (json.loads((d / document).read_text()) for d in (ref, out))
        for key in volatile:
            da.pop(key, None), db.pop(key, None)
        if da != db:
            problems.append(f"{document} differs beyond {', '.join(volatile)}")
    problems += [f"{p.relative_to(out)}: temporary file left" for p in out.rglob("*.tmp-*")]
    return problems


def kill_rounds(
    cmd: list[str],
    log: Path,
    output: Path,
    reference: Path,
    kills: int,
    rng: random.Random,
    differences: Callable[[Path, Path], list[str]],
    done: Callable[[Path], int],
    per_round: int = 2,
    env: dict[str, str] | None = None,
) -> dict:
    """Rounds of up to ``per_round`` kills of ``cmd`` (the job writing ``output``, started from
    nothing each round) and then a run to the end, until ``kills`` kills; each round's output is
    checked with ``differences(reference, output)``. The first kill of a round strikes a random
    fraction of a second after 1 .. n-1 of the reference's n files were written (mid work); the
    next after a random number of the writes left (0: mid start-up, up to 15 s in). Returns
    ``{"kills": [one row per run], "rounds", "problems"}``; ``done(output)`` is each row's
    progress (markers written). The last round's output is left in place."""
    files = sum(1 for p in reference.rglob("*") if p.is_file())
    rows, problems, rounds = [], [], 0
    while sum(r["ended"] == "killed" for r in rows) < kills:
        shutil.rmtree(output, ignore_errors=True)
        for k in range(per_round):
            left = files - sum(1 for p in output.rglob("*") if p.is_file())
            m = rng.randint(1 if k == 0 else 0, max(1, left - 1))
            kill_at = (m, rng.uniform(0.0, 15.0) if m == 0 else rng.uniform(0.0, 0.5))
            how = run_job(cmd, log, output, kill_at, env)
            rows.append({"round": rounds, "after_writes": m, "jitter_s": round(kill_at[1], 2),
                         "ended": how, "done": done(output)})  # fmt: skip
            if how != "killed":
                break
        if how == "killed":
            how = run_job(cmd, log, output, None, env)
            rows.append({"round": rounds, "after_writes": None, "jitter_s": None, "ended": how,
                         "done": done(output)})  # fmt: skip
        problems += [f"round {rounds}: {p}" for p in differences(reference, output)]
        rounds += 1
        if how.startswith("exit"):
            problems.append(f"round {rounds - 1}: a rerun failed ({how}); see {log}")
            break
    return {"kills": rows, "rounds": rounds, "problems": problems}


def print_kills(result: dict, done_header: str) -> None:
    """The table of a :func:`kill_rounds` result, and its summary line."""
    print(f"{'round':>5} {'after writes':>13} {'+ s':>5} {'ended':>10} {done_header:>13}")
    for r in result["kills"]:
        writes = "-" if r["after_writes"] is None else r["after_writes"]
        jitter = "-" if r["jitter_s"] is None else r["jitter_s"]
        print(f"{r['round']:>5} {writes:>13} {jitter:>5} {r['ended']:>10} {r['done']:>13}")
    killed = sum(r["ended"] == "killed" for r in result["kills"])
    print(f"{killed} kills in {result['rounds']} rounds (each rerun to the end and compared); "
          f"{len(result['problems'])} difference(s) from the uninterrupted run")  # fmt: skip
    for p in result["problems"]:
        print("  " + p)


def reference_then_kills(
    cmd: list[str],
    out: Path,
    output: str,
    kills: int,
    seed: int,
    differences: Callable[[Path, Path], list[str]],
    done: Callable[[Path], int],
    per_round: int = 2,
    env: dict[str, str] | None = None,
) -> dict:
    """The uninterrupted run of ``cmd`` into ``out/<output>``, moved to ``out/reference``; then
    :func:`kill_rounds` into ``out/<output>`` again (one command, so one manifest: its hash is in
    the outputs). Logs go to ``out/reference.log`` and ``out/killed.log``."""
    t0 = time.monotonic()
    if (how := run_job(cmd, out / "reference.log", out / output, env=env)) != "finished":
        raise RuntimeError(f"the uninterrupted run did not finish ({how}); see reference.log")
    seconds = time.monotonic() - t0
    (out / output).rename(out / "reference")
    files = sum(1 for p in (out / "reference").rglob("*") if p.is_file())
    result = kill_rounds(cmd, out / "killed.log", out / output, out / "reference", kills,
                         random.Random(seed), differences, done, per_round, env)  # fmt: skip
    return {"reference_seconds": round(seconds, 2), "files": files, **result}


def main(
    doc: str, scenario: Callable[[Path, int, int, int], dict], done_header: str, argv=None
) -> int:
    """A scenario module's command line: ``--kills``, ``--seed``, ``--per-round``, ``--out``;
    writes ``<out>/result.json``, prints the kills; 0 only when every round matched."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-round", type=int, default=2, help="kills before a run to the end")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="neo-kill-"))
    out.mkdir(parents=True, exist_ok=True)
    result = scenario(out, args.kills, args.seed, args.per_round)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"reference run: {result['reference_seconds']} s, {result['files']} files; "
          f"work folder {out}")  # fmt: skip
    print_kills(result, done_header)
    return 0 if not result["problems"] and result["rounds"] else 1
