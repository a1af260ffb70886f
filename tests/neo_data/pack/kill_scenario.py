"""Kill -9 at random points of ``neo pack``, rerun, and compare with an uninterrupted run.

Not a test module: ``tests/neo_data/pack/test_kill.py`` runs a short version; the full one is

    .venv/bin/python -m tests.neo_data.pack.kill_scenario --kills 20 [--out DIR] [--seed N]

Steps: write a small curated set (captions, conversations, texts in files of 20 rows, so a
dozen windows) and a manifest; pack it once uninterrupted (the reference, timed); then start the
same pack again and again, each run killed with SIGKILL (its whole session: the driver, the
local Ray it started and Ray's workers) at a random point -- a random fraction of a second after
a random number of the files it writes (none: mid start-up) -- until ``--kills`` runs were
killed. A run that finishes ends a round: its output must equal the
reference -- every file under ``shards/`` and ``rejected/`` byte-identical, ``index.json`` equal
but for its time fields, no temporary file left -- and the next round starts from nothing. Prints a table of the kills and writes ``<out>/result.json``; exits 0 only when every
check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neo_data.synthetic.dataset import write_demo_dataset
from tests.helpers import REPO

MANIFEST = """
name: kill
stage: pretrain
data:
  curated: [{curated}]
  packed: {packed}
pack:
  seq_len: 1024
  min_pixels: 1024
  max_pixels: 65536
  buckets:
    - {{name: low, max_image_tokens: 16}}
    - {{name: high, max_image_tokens: 64}}
  text_ratio: 0.3
  packs_per_shard: 2
  window_samples: 20
"""

COMPARED = ("shards", "rejected")
TIME_FIELDS = ("created_at", "timing")


def pack_command(manifest: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.pack",
        "--manifest",
        str(manifest),
        "--concurrency",
        "1",
    ]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", NEO_RAY_OBJECT_STORE_BYTES=str(200 << 20))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (the pack driver started it: Ray's own processes stay in it)."""
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
    """SIGKILL every process of ``proc``'s session (only what this scenario started)."""
    for _ in range(20):
        members = session_members(proc.pid)
        if not members:
            break
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    proc.wait()


def written_since(root: Path, t0: float) -> int:
    """Files under ``root`` written (created or replaced) since wall-clock time ``t0``."""
    n = 0
    for p in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if p.is_file() and ".tmp-" not in p.name and p.stat().st_mtime >= t0:
                n += 1
    return n


def run_pack(
    manifest: Path, log: Path, output: Path, kill_at: tuple[int, float] | None = None
) -> str:
    """Run the pack; with ``kill_at = (m, jitter)``, SIGKILL it ``jitter`` seconds after it has
    written its ``m``-th file (m = 0: ``jitter`` seconds after the start, mid start-up). Returns
    how it ended: ``killed``, ``finished`` or ``exit N``."""
    t0, since = time.time(), None
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            pack_command(manifest), cwd=REPO, env=environment(), stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        while proc.poll() is None and time.time() - t0 < 900:
            if kill_at is not None:
                m, jitter = kill_at
                if since is None and (m == 0 or written_since(output, t0) >= m):
                    since = time.time()
                if since is not None and time.time() - since >= jitter:
                    kill_session(proc)
                    return "killed"
            time.sleep(0.02)
        kill_session(proc)  # a finished driver may leave Ray processes behind
    return "finished" if proc.returncode == 0 else f"exit {proc.returncode}"


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in COMPARED
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def compare(ref: Path, out: Path) -> list[str]:
    problems = []
    a, b = tree(ref), tree(out)
    for name in sorted(a.keys() | b.keys()):
        if name not in b:
            problems.append(f"{name}: missing after the kills")
        elif name not in a:
            problems.append(f"{name}: not in the uninterrupted run")
        elif a[name] != b[name]:
            problems.append(f"{name}: bytes differ")
    if not (out / "index.json").exists():
        return [*problems, "index.json: missing after the kills"]
    ia, ib = (json.loads((d / "index.json").read_text()) for d in (ref, out))
    for field in TIME_FIELDS:
        ia.pop(field, None), ib.pop(field, None)
    if ia != ib:
        problems.append("index.json differs beyond its time fields")
    stale = [str(p) for p in out.rglob("*") if ".tmp-" in p.name]
    problems += [f"{p}: temporary file left" for p in stale]
    return problems


def scenario(out: Path, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    curated = out / "curated"
    write_demo_dataset(str(curated), captions=80, conversations=20, texts=40, seed=seed,
                       rows_per_file=20)  # fmt: skip
    # one manifest (its hash is in the index), packed into out/packed: the reference first,
    # moved to out/reference, then the killed runs
    manifest = out / "kill.yaml"
    manifest.write_text(MANIFEST.format(curated=curated, packed=out / "packed"))
    t0 = time.monotonic()
    if (how := run_pack(manifest, out / "reference.log", out / "packed")) != "finished":
        raise RuntimeError(f"the uninterrupted pack did not finish ({how}); see reference.log")
    ref_seconds = time.monotonic() - t0
    files = sum(1 for p in (out / "packed").rglob("*") if p.is_file())
    (out / "packed").rename(out / "reference")
    rows, rounds, problems, open_round = [], 0, [], False
    while sum(r["ended"] == "killed" for r in rows) < kills:
        # after a random number of the writes left to this round (0: during start-up, up to
        # 15 s in), a random moment later
        left = files - sum(1 for p in (out / "packed").rglob("*") if p.is_file())
        m = rng.randint(0, max(0, left - 1))
        kill_at = (m, rng.uniform(0.0, 15.0) if m == 0 else rng.uniform(0.0, 0.5))
        how = run_pack(manifest, out / "killed.log", out / "packed", kill_at)
        open_round = True
        markers = len(list((out / "packed" / "_work" / "windows").glob("*.json")))
        rows.append({"round": rounds, "after_writes": kill_at[0],
                     "jitter_s": round(kill_at[1], 2), "ended": how, "markers": markers})  # fmt: skip
        if how.startswith("exit"):
            problems.append(f"round {rounds}: a rerun failed ({how}); see killed.log")
            break
        if how == "finished" or (out / "packed" / "index.json").exists():
            problems += [f"round {rounds}: {p}" for p in compare(out / "reference", out / "packed")]
            shutil.rmtree(out / "packed")  # a new round of kills from the start
            rounds, open_round = rounds + 1, False
    if open_round:  # the last round: let it finish
        how = run_pack(manifest, out / "killed.log", out / "packed")
        rows.append({"round": rounds, "after_writes": None, "jitter_s": None, "ended": how,
                     "markers": len(list((out / "packed" / "_work" / "windows").glob("*.json")))})  # fmt: skip
        problems += [f"round {rounds}: {p}" for p in compare(out / "reference", out / "packed")]
        rounds += 1
    return {"reference_seconds": round(ref_seconds, 2), "files": files, "kills": rows,
            "rounds": rounds, "problems": problems}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="neo-kill-"))
    out.mkdir(parents=True, exist_ok=True)
    result = scenario(out, args.kills, args.seed)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"reference run: {result['reference_seconds']} s, {result['files']} files; "
          f"work folder {out}")  # fmt: skip
    print(f"{'round':>5} {'after writes':>13} {'+ s':>5} {'ended':>10} {'windows done':>13}")
    for r in result["kills"]:
        writes = "-" if r["after_writes"] is None else r["after_writes"]
        jitter = "-" if r["jitter_s"] is None else r["jitter_s"]
        print(f"{r['round']:>5} {writes:>13} {jitter:>5} {r['ended']:>10} {r['markers']:>13}")
    killed = sum(r["ended"] == "killed" for r in result["kills"])
    print(f"{killed} kills in {result['rounds']} rounds (each rerun to the end and compared); "
          f"{len(result['problems'])} difference(s) from the uninterrupted run")  # fmt: skip
    for p in result["problems"]:
        print("  " + p)
    return 0 if not result["problems"] and result["rounds"] else 1


if __name__ == "__main__":
    sys.exit(main())
