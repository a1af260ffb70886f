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

import io
import sys
from pathlib import Path

import yaml
from PIL import Image

from neo_model.testing import save_random_neo
from tests import killing
from tests.helpers import caption_row, conversation_row, text_row, write_curated

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
    return killing.compare(ref, out, COMPARED, "report.json", TIME_FIELDS)


def scenario(out: Path, kills: int, seed: int, per_round: int = 2) -> dict:
    write_inputs(out / "curated")
    model = save_random_neo(out / "neo-tiny")
    manifest = out / "kill.yaml"
    manifest.write_text(manifest_text(out / "curated", model, out / "recaptioned"))
    env = killing.environment(SOURCE_DATE_EPOCH=EPOCH)
    return killing.reference_then_kills(
        command(manifest), out, "recaptioned", kills, seed, differences, markers, per_round, env
    )


if __name__ == "__main__":
    sys.exit(killing.main(__doc__, scenario, "files done"))
