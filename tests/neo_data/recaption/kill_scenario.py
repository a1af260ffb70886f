"""Kill -9 at random points of ``neo recaption``, rerun, and compare with an uninterrupted run.

Not a test module: ``tests/neo_data/recaption/test_kill.py`` runs a short version; the full one
is

    .venv/bin/python -m tests.neo_data.recaption.kill_scenario --kills 20 [--seed N] [--out DIR]

Steps: write six small curated files (captions, one corrupt image, a conversation, a text, two
sources; row groups of 3) and a tiny random NEO checkpoint (``neo_model.testing``: the ``neo``
backend on the CPU, greedy), and a manifest; recaption once uninterrupted (the reference); then
rounds (:func:`tests.killing.kill_rounds`): the same job started from nothing and SIGKILLed --
its whole session: the driver, the local Ray it started, the captioning actors -- a random
fraction of a second after a random number of the files it writes, again, then a run to the end.
Each round's output must equal the reference: every file under ``samples/`` and ``failures/``
byte-identical, ``report.json`` equal but for its time fields, no temporary file left. Every run
has the same ``SOURCE_DATE_EPOCH``, so the captions' ``created_at`` agree. Prints a table of the
kills and writes ``<out>/result.json``; exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from neo_model.testing import save_random_neo
from tests.helpers import caption_row, conversation_row, text_row, write_curated
from tests.killing import compare, environment, kill_rounds, print_kills, run_job

COMPARED = ("samples", "failures")
TIME_FIELDS = ("created_at", "seconds")
EPOCH = "1767225600"  # 2026-01-01T00:00:00Z, every run's caption time


def picture(i: int) -> bytes:
    img = Image.effect_mandelbrot((40 + 5 * i, 36), (-2, -1, 1, 1), 10 + i).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_inputs(root: Path) -> None:
    """Six files of 5 rows: mostly captions, a corrupt image in file 1, a conversation and a
    document in file 2, a source not selected in file 4; 30 rows, 4 to skip, 1 to fail."""
    root.mkdir(parents=True, exist_ok=True)
    for f in range(6):
        n = 5 * f
        rows = [caption_row(n + i, f"original {n + i}", [picture(n + i)]) for i in range(5)]
        if f == 1:
            rows[2] = caption_row(n + 2, "original, corrupt", [b"\x89PNG\r\n broken"])
        if f == 2:
            rows[3] = conversation_row(n + 3, [("user", "<image>\nHi"), ("assistant", "Hey")],
                                       [picture(n + 3)])  # fmt: skip
            rows[4] = text_row(n + 4, "a document about harbours")
        if f == 4:
            rows[:2] = [caption_row(n + i, f"web {i}", [picture(n + i)], source="web")
                        for i in range(2)]  # fmt: skip
        write_curated(str(root / f"part-{f}.parquet"), rows, row_group_size=3)


def manifest_text(curated: Path, model: Path, output: Path) -> str:
    recaption = {
        "input": [str(curated)],
        "output": str(output),
        "backend": "neo",
        "model": str(model),
        "prompt": "Write a caption.",
        "generation": {"max_new_tokens": 4},
        "sources": ["test"],
        "num_gpus": 0,
        "num_cpus": 0.5,
        "batch_size": 2,
        "pool_size": 1,
    }
    data = {"curated": [str(curated)], "packed": str(output.parent / "packed")}
    return yaml.safe_dump({"name": "kill", "data": data, "recaption": recaption})


def command(manifest: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.recaption", "--manifest", str(manifest)]


def markers(out: Path) -> int:
    return len(list((out / "_work").glob("*.parquet.json")))


def differences(ref: Path, out: Path) -> list[str]:
    return compare(ref, out, COMPARED, "report.json", TIME_FIELDS)


def scenario(out: Path, kills: int, seed: int, per_round: int = 2) -> dict:
    rng = random.Random(seed)
    write_inputs(out / "curated")
    model = save_random_neo(out / "neo-tiny")
    # one manifest (its hash is in the report), recaptioned into out/recaptioned: the reference
    # first, moved to out/reference, then the killed runs
    manifest = out / "kill.yaml"
    manifest.write_text(manifest_text(out / "curated", model, out / "recaptioned"))
    env = environment(SOURCE_DATE_EPOCH=EPOCH)
    t0 = time.monotonic()
    how = run_job(command(manifest), out / "reference.log", out / "recaptioned", env=env)
    if how != "finished":
        raise RuntimeError(f"the uninterrupted recaption did not finish ({how}); see reference.log")
    ref_seconds = time.monotonic() - t0
    (out / "recaptioned").rename(out / "reference")
    files = sum(1 for p in (out / "reference").rglob("*") if p.is_file())
    result = kill_rounds(command(manifest), out / "killed.log", out / "recaptioned",
                         out / "reference", kills, rng, differences, markers, per_round, env)  # fmt: skip
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
    print_kills(result, "files done")
    return 0 if not result["problems"] and result["rounds"] else 1


if __name__ == "__main__":
    sys.exit(main())
