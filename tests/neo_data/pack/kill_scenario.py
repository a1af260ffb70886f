"""Kill -9 at random points of ``neo pack``, rerun, and compare with an uninterrupted run.

Not a test module: ``tests/neo_data/pack/test_kill.py`` runs a short version; the full one is

    .venv/bin/python -m tests.neo_data.pack.kill_scenario --kills 20 [--out DIR] [--seed N]

Steps: write a small curated set (captions, conversations, texts in files of 20 rows, so a
dozen windows) and a manifest; pack it once uninterrupted (the reference, timed); then start the
same pack again and again, each run killed with SIGKILL (its whole session: the driver, the
local Ray it started and Ray's workers) after a random delay drawn over the reference's duration,
until ``--kills`` runs were killed. A run that finishes ends a round: its output must equal the
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


def run_pack(
    manifest: Path, log: Path, kill_after: float | None = None, watch: Path | None = None
) -> tuple[str, float, float | None]:
    """Run the pack; with ``kill_after``, SIGKILL it then. Returns how it ended, its seconds and
    when ``watch`` first existed (None if never)."""
    t0 = time.monotonic()
    seen = None
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            pack_command(manifest), cwd=REPO, env=environment(), stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        limit = kill_after if kill_after is not None else 900
        while proc.poll() is None and time.monotonic() - t0 < limit:
            if seen is None and watch is not None and watch.exists():
                seen = time.monotonic() - t0
            time.sleep(0.05)
        if proc.poll() is None:
            kill_session(proc)
            return "killed", time.monotonic() - t0, seen
        kill_session(proc)  # a finished driver may leave Ray processes behind
    how = "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
    return how, time.monotonic() - t0, seen


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
    write_demo_dataset(str(curated), captions=120, conversations=40, texts=80, seed=seed,
                       rows_per_file=20)  # fmt: skip
    # one manifest (its hash is in the index), packed into out/packed: the reference first,
    # moved to out/reference, then the killed runs
    manifest = out / "kill.yaml"
    manifest.write_text(MANIFEST.format(curated=curated, packed=out / "packed"))
    how, ref_seconds, started = run_pack(
        manifest, out / "reference.log", watch=out / "packed" / "_work" / "plan.json"
    )
    started = started or 0.0  # when the job had planned (Ray up): kills land in the work after
    if how != "finished":
        raise RuntimeError(f"the uninterrupted pack did not finish ({how}); see reference.log")
    (out / "packed").rename(out / "reference")
    rows, rounds, problems, open_round = [], 0, [], False
    while sum(r["ended"] == "killed" for r in rows) < kills:
        delay = started + rng.uniform(0.0, 1.0) * (ref_seconds - started)
        how, _, _ = run_pack(manifest, out / "killed.log", kill_after=delay)
        open_round = True
        markers = len(list((out / "packed" / "_work" / "windows").glob("*.json")))
        rows.append({"round": rounds, "after_s": round(delay, 2), "ended": how, "markers": markers})
        if how.startswith("exit"):
            problems.append(f"round {rounds}: a rerun failed ({how}); see killed.log")
            break
        if how == "finished" or (out / "packed" / "index.json").exists():
            problems += [f"round {rounds}: {p}" for p in compare(out / "reference", out / "packed")]
            shutil.rmtree(out / "packed")  # a new round of kills from the start
            rounds, open_round = rounds + 1, False
    if open_round:  # the last round: let it finish
        how, _, _ = run_pack(manifest, out / "killed.log")
        rows.append({"round": rounds, "after_s": None, "ended": how, "markers": None})
        problems += [f"round {rounds}: {p}" for p in compare(out / "reference", out / "packed")]
        rounds += 1
    return {"reference_seconds": round(ref_seconds, 2), "planned_after_s": round(started, 2),
            "kills": rows, "rounds": rounds,
            "problems": problems}  # fmt: skip


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
    print(f"reference run: {result['reference_seconds']} s (planned after "
          f"{result['planned_after_s']} s); work folder {out}")  # fmt: skip
    print(f"{'round':>5} {'kill after s':>13} {'ended':>10} {'windows done':>13}")
    for r in result["kills"]:
        after = "-" if r["after_s"] is None else r["after_s"]
        done = "-" if r["markers"] is None else r["markers"]
        print(f"{r['round']:>5} {after:>13} {r['ended']:>10} {done:>13}")
    killed = sum(r["ended"] == "killed" for r in result["kills"])
    print(f"{killed} kills in {result['rounds']} rounds (each rerun to the end and compared); "
          f"{len(result['problems'])} difference(s) from the uninterrupted run")  # fmt: skip
    for p in result["problems"]:
        print("  " + p)
    return 0 if not result["problems"] and result["rounds"] else 1


if __name__ == "__main__":
    sys.exit(main())
