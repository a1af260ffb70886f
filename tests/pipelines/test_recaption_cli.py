"""``neo recaption`` through ``ray job submit`` to a real local cluster, and the command-line
errors of ``neo recaption`` / ``neo serve``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from neo_model.testing import save_random_neo
from pipelines import cli
from tests.helpers import caption_row, write_curated


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_mandelbrot((48 + i, 40), (-2, -1, 1, 1), 20).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def write_manifest(tmp: Path, curated: Path, model: Path, **recaption) -> Path:
    doc = {
        "name": "recaption-cli",
        "data": {"curated": [str(tmp / "out" / "samples")], "packed": str(tmp / "packed")},
        "recaption": {
            "input": str(curated),
            "output": str(tmp / "out"),
            "backend": "neo",
            "model": str(model),
            "generation": {"max_new_tokens": 3},
            "num_gpus": 0,
            "num_cpus": 0.5,
            "batch_size": 4,
            **recaption,
        },
    }
    path = tmp / "recaption.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_recaption_job_through_ray_job_submit(ray_cluster, tmp_path):
    curated = tmp_path / "curated"
    curated.mkdir()
    rows = [caption_row(i, f"alt {i}", [jpeg(i)]) for i in range(5)]
    rows.append(caption_row(5, "alt 5", [b"broken"]))
    write_curated(str(curated / "part-0.parquet"), rows)
    model = save_random_neo(tmp_path / "neo-debug")
    manifest = write_manifest(tmp_path, curated, model)
    run = ray_cluster.submit(["python", "-m", "pipelines.recaption", "--manifest", str(manifest)])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "recaptioned 5" in run.stdout and "image_decode_error" in run.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["rows"] == 6 and report["totals"]["recaptioned"] == 5
    out = pq.read_table(tmp_path / "out" / "samples" / "part-0.parquet").to_pylist()
    assert [len(r["captions"]) for r in out] == [2, 2, 2, 2, 2, 1]


def test_recaption_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {curated: [a], packed: b}\nrecaption: {backend: gpt}\n")
    assert cli.main(["recaption", "--manifest", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3: recaption.backend" in err and "recaption.input" in err

    none = tmp_path / "none.yaml"
    none.write_text("name: x\ndata: {curated: [a], packed: b}\n")
    assert cli.main(["recaption", "--manifest", str(none)]) == 2
    assert "no `recaption:` section" in capsys.readouterr().err


def test_recaption_cli_refuses_mix_without_the_packer_mixing(ray_local, tmp_path, capsys):
    curated = tmp_path / "curated"
    curated.mkdir()
    write_curated(str(curated / "p.parquet"), [caption_row(0, "alt", [jpeg(0)])])
    manifest = write_manifest(tmp_path, curated, tmp_path / "no-model", policy="mix")
    assert cli.main(["recaption", "--manifest", str(manifest)]) == 2
    assert "pack.caption_choice mix" in capsys.readouterr().err
    missing = write_manifest(tmp_path, tmp_path / "nowhere", tmp_path / "no-model")
    assert cli.main(["recaption", "--manifest", str(missing)]) == 2
    assert "recaption.input" in capsys.readouterr().err


def test_serve_cli_names_a_bad_checkpoint(tmp_path, capsys):
    assert cli.main(["serve", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["serve", "--checkpoint", str(tmp_path / "empty")]) == 2
    assert "not a NEO checkpoint" in capsys.readouterr().err
