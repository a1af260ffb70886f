"""The main job (Quickstart command 1) as a cluster user runs it: `ray job submit` of `neo demo`
to a real local Ray cluster (token authentication on), at a small size."""

from __future__ import annotations

import re

import pytest

from neo_data.format.shards import PackedDataset
from neo_model.weights import from_pretrained

pytestmark = pytest.mark.slow


def test_main_job_chain_through_ray_job_submit(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    run = ray_cluster.submit(
        ["python", "-m", "pipelines.cli", "demo", "--out", str(out), "--captions", "40",
         "--recaption", "6", "--conversations", "20", "--texts", "30", "--train-steps", "2"],
        timeout=900,
    )  # fmt: skip
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-4000:]
    # every step reported, in order
    steps = re.findall(r"^<== ([a-z0-9 ]+?):", run.stdout, flags=re.M)
    assert steps == [
        "models", "demo data", "curate", "recaption", "pack pretrain", "train pretrain",
        "pack midtrain", "train midtrain", "pack sft", "train sft", "answer",
    ]  # fmt: skip
    assert "the trained model on images it never saw" in run.stdout
    assert re.search(r"^\s+total\s+[0-9.]+$", run.stdout, flags=re.M)
    # what each stage left behind is what the next one read
    for stage in ("pretrain", "midtrain", "sft"):
        ds = PackedDataset(str(out / "packed" / stage))
        assert ds.verify() == []
        assert ds.index["manifest"]["name"] in ("demo", f"demo-{stage}")
    sft = PackedDataset(str(out / "packed" / "sft"))
    assert set(sft.index["totals"]).issuperset({"packs", "samples"})
    model = from_pretrained(out / "train" / "sft" / "export")
    assert model.config.num_extra_layers == 2
