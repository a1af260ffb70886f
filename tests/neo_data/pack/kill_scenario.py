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

import sys
from pathlib import Path

from neo_data.synthetic.dataset import write_demo_dataset
from tests import killing

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
    return killing.compare(ref, out, COMPARED, "index.json", TIME_FIELDS)


def markers(out: Path) -> int:
    return len(list((out / "_work" / "windows").glob("*.json")))


def scenario(out: Path, kills: int, seed: int, per_round: int = 2) -> dict:
    curated = out / "curated"
    write_demo_dataset(str(curated), captions=80, conversations=20, texts=40, seed=seed,
                       rows_per_file=20)  # fmt: skip
    manifest = out / "kill.yaml"
    manifest.write_text(MANIFEST.format(curated=curated, packed=out / "packed"))
    return killing.reference_then_kills(
        pack_command(manifest), out, "packed", kills, seed, differences, markers, per_round
    )


if __name__ == "__main__":
    sys.exit(killing.main(__doc__, scenario, "windows done"))
