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
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from neo_data.synthetic.dataset import write_demo_dataset
from tests.killing import compare, kill_rounds, print_kills, run_job

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


def differences(ref: Path, out: Path) -> list[str]:
    return compare(ref, out, COMPARED, "index.json", TIME_FIELDS)


def markers(out: Path) -> int:
    return len(list((out / "_work" / "windows").glob("*.json")))


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
    how = run_job(pack_command(manifest), out / "reference.log", out / "packed")
    if how != "finished":
        raise RuntimeError(f"the uninterrupted pack did not finish ({how}); see reference.log")
    ref_seconds = time.monotonic() - t0
    files = sum(1 for p in (out / "packed").rglob("*") if p.is_file())
    (out / "packed").rename(out / "reference")
    result = kill_rounds(pack_command(manifest), out / "killed.log", out / "packed",
                         out / "reference", kills, rng, differences, markers, per_round)  # fmt: skip
    return {"reference_seconds": round(ref_seconds, 2), "files": files, **result}


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
    print_kills(result, "windows done")
    return 0 if not result["problems"] and result["rounds"] else 1


if __name__ == "__main__":
    sys.exit(main())
