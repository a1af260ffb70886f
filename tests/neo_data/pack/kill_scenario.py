"""Kill -9 at random points of ``neo pack``, rerun, and compare with an uninterrupted run.

Not a test module: ``tests/neo_data/pack/test_kill.py`` runs a short version; the full one is

    .venv/bin/python -m tests.neo_data.pack.kill_scenario --kills 20 [--out DIR] [--seed N]

Steps: write a small curated set (captions, conversations, texts in files of 20 rows: seven
windows) and a manifest; pack it once uninterrupted (the reference); then rounds of
``--per-round`` kills: the same pack started from nothing and SIGKILLed (its whole session: the
driver, the local Ray it started and Ray's workers) a random fraction of a second after a random
number of the files it writes (the first kill of a round mid work; later ones possibly mid
start-up), then a run to the end. Each round's output must equal the reference -- every file
under ``shards/`` and ``rejected/`` byte-identical, ``index.json`` equal but for its time
fields, no temporary file left. Prints a table of the kills and writes ``<out>/result.json``;
exits 0 only when every check passed.
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


def markers(out: Path) -> int:
    return len(list((out / "packed" / "_work" / "windows").glob("*.json")))


def scenario(out: Path, kills: int, seed: int, per_round: int = 2) -> dict:
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
    rows, problems, rounds = [], [], 0
    while sum(r["ended"] == "killed" for r in rows) < kills:
        for k in range(per_round):  # a round: kills from nothing, then a run to the end
            # the first kill after 1 .. files-1 writes (mid work), the next after a random number
            # of the writes left (0: mid start-up, up to 15 s in); then a fraction of a second
            left = files - sum(1 for p in (out / "packed").rglob("*") if p.is_file())
            m = rng.randint(1 if k == 0 else 0, max(1, left - 1))
            kill_at = (m, rng.uniform(0.0, 15.0) if m == 0 else rng.uniform(0.0, 0.5))
            how = run_pack(manifest, out / "killed.log", out / "packed", kill_at)
            rows.append({"round": rounds, "after_writes": m, "jitter_s": round(kill_at[1], 2),
                         "ended": how, "markers": markers(out)})  # fmt: skip
            if how != "killed":
                break
        if how == "killed":
            how = run_pack(manifest, out / "killed.log", out / "packed")
            rows.append({"round": rounds, "after_writes": None, "jitter_s": None, "ended": how,
                         "markers": markers(out)})  # fmt: skip
        problems += [f"round {rounds}: {p}" for p in compare(out / "reference", out / "packed")]
        if how.startswith("exit"):
            problems.append(f"round {rounds}: a rerun failed ({how}); see killed.log")
            break
        shutil.rmtree(out / "packed")
        rounds += 1
    return {"reference_seconds": round(ref_seconds, 2), "files": files, "kills": rows,
            "rounds": rounds, "problems": problems}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
