"""The main job (Quickstart command 1) as a cluster user runs it: `ray job submit` of `neo demo`
to a real local Ray cluster (token authentication on), at a small size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from neo_data.format.shards import PackedDataset
from neo_data.manifest import load_manifest
from neo_data.manifest.examples import example_path
from neo_model.weights import from_pretrained, from_qwen3
from pipelines.demo import STAGE_MANIFESTS, relocate
from tests.helpers import stage_1_keys

pytestmark = pytest.mark.slow
TRAIN_STEPS = 2


def test_main_job_chain_through_ray_job_submit(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    run = ray_cluster.submit(
        ["python", "-m", "pipelines.cli", "demo", "--out", str(out), "--captions", "40",
         "--recaption", "6", "--conversations", "20", "--texts", "30",
         "--lm-steps", "4", "--held-out", "8", "--train-steps", str(TRAIN_STEPS)],
        timeout=900,
    )  # fmt: skip
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-4000:]
    # every step reported, in order
    steps = re.findall(r"^<== ([a-z0-9 ]+?):", run.stdout, flags=re.M)
    assert steps == [
        "language model", "captioner", "demo data", "curate", "recaption", "pack pretrain", "train pretrain",
        "pack midtrain", "train midtrain", "pack sft", "train sft", "answer",
    ]  # fmt: skip
    assert "the trained model on images it never saw" in run.stdout
    assert re.search(r"^\s+total\s+[0-9.]+\s+[0-9]+$", run.stdout, flags=re.M)
    # the summary: a row per step, the held-out table per attribute
    summary = json.loads((out / "summary.json").read_text())
    assert [r["step"] for r in summary["steps"]] == steps
    table = summary["held_out"]
    assert table["scenes"] == 8
    assert set(table["attributes"]) == {"count", "colour", "shape", "position", "background"}
    for row in table["attributes"].values():
        assert 0 < row["chance"] < 1 and 0 <= row["accuracy"] <= 1
    # what each stage left behind is what the next one read
    for stage in ("pretrain", "midtrain", "sft"):
        ds = PackedDataset(str(out / "packed" / stage))
        assert ds.verify() == []
        assert ds.index["manifest"]["name"] in ("demo", f"demo-{stage}")
    sft = PackedDataset(str(out / "packed" / "sft"))
    assert set(sft.index["totals"]).issuperset({"packs", "samples"})
    model = from_pretrained(out / "train" / "sft" / "export")
    assert model.config.num_extra_layers == 2

    steps_override = {"train.steps": TRAIN_STEPS}
    stages = [
        relocate(load_manifest(example_path(name), steps_override), str(out))
        for name in STAGE_MANIFESTS
    ]
    _check_curate_and_recaption(out)
    for manifest in stages:
        _check_packed_from_its_curated_inputs(manifest)
    _check_training_chain(out, stages)


def _rows(files: list[Path], columns: list[str]) -> list[dict]:
    return [row for f in files for row in pq.read_table(f, columns=columns).to_pylist()]


def _check_curate_and_recaption(out: Path) -> None:
    """curate's report counts its samples/; recaption's samples are the curated recaption
    source's rows, the originals first and one new caption after them."""
    curated = sorted((out / "curated" / "samples").glob("*.parquet"))
    report = json.loads((out / "curated" / "report.json").read_text())
    assert sum(pq.read_metadata(f).num_rows for f in curated) == report["totals"]["kept"] > 0
    columns = ["sample_id", "source", "row", "images", "captions"]
    source = [f for f in curated if f.name.startswith("demo-recaption-")]
    recaptioned = sorted((out / "recaptioned" / "samples").glob("*.parquet"))
    before = {r["sample_id"]: r for r in _rows(source, columns)}
    after = {r["sample_id"]: r for r in _rows(recaptioned, columns)}
    assert after.keys() == before.keys() and before
    recaption = json.loads((out / "recaptioned" / "report.json").read_text())
    assert recaption["totals"]["rows"] == len(before)
    for sample_id, row in after.items():
        old = before[sample_id]
        assert (row["source"], row["row"]) == (old["source"], old["row"])
        assert [i["sha256"] for i in row["images"]] == [i["sha256"] for i in old["images"]]
        originals = [c["text"] for c in old["captions"]]
        assert [c["text"] for c in row["captions"][: len(originals)]] == originals
    added = sum(len(r["captions"]) - len(before[s]["captions"]) for s, r in after.items())
    assert added == recaption["totals"]["recaptioned"]


def _check_packed_from_its_curated_inputs(manifest) -> None:
    """A stage's packed dataset holds samples of exactly the files its manifest names: every
    input row is counted in, each packed sample is one of them (once), the rest are dropped
    with a reason."""
    inputs: list[Path] = []
    for pattern in manifest.data.curated:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        assert found, pattern
        inputs += found
    ids = [r["sample_id"] for r in _rows(inputs, ["sample_id"])]
    ds = PackedDataset(manifest.data.packed)
    totals = ds.index["totals"]
    assert totals["samples_in"] == len(ids)
    packed = [
        sample
        for i in range(len(ds.shards))
        for row in ds.read_shard(i, ["sample_ids"]).to_pylist()
        for sample in row["sample_ids"]
    ]
    assert len(packed) == len(set(packed)) == totals["samples"] > 0
    assert set(packed) <= set(ids)
    assert totals["samples"] + sum(totals["dropped"].values()) == len(ids)


def _check_training_chain(out: Path, stages) -> None:
    """Stage 1 starts from the tiny Qwen3 of the language-model step (its Qwen3 weights frozen, bit
    for bit, the rest moved); stages 2 and 3 each start from the previous stage's export: Adam
    moves a weight by about the learning rate a step at most, so no weight of an export is
    further from the previous export than steps x lr (x1.5: bias correction), while a different
    start (a fresh NEO, stage 1's Qwen3 start) is further. Each export carries the pixel budget
    of the packs it trained on; each stage's last checkpoint records all its steps and packs."""
    first = stages[0].train
    start = from_qwen3(out / "models" / "qwen3-lm", num_extra_layers=2, seed=first.seed)
    trained, frozen = stage_1_keys(pre_buffer=2, post_llm=2)
    previous, previous_export = start.state_dict(), str(out / "models" / "qwen3-lm")
    for manifest in stages:
        spec = manifest.train
        assert spec.steps == TRAIN_STEPS and spec.init.path == previous_export
        export = from_pretrained(spec.output + "/export")
        weights = export.state_dict()
        assert weights.keys() == previous.keys() == trained | frozen
        moved = {n for n in weights if not torch.equal(weights[n], previous[n])}
        if manifest.stage == "pretrain":
            assert moved == trained, (sorted(trained - moved), sorted(moved - trained))
        else:
            assert moved, manifest.stage
            lr = spec.resolved_lr(manifest.stage)[0]
            far = max(float((weights[n] - previous[n]).abs().max()) for n in weights)
            assert far <= 1.5 * spec.steps * lr, (manifest.stage, far, lr)
        pixels = PackedDataset(manifest.data.packed).index["pixels"]
        assert (export.config.min_pixels, export.config.max_pixels) == (
            pixels["min"], pixels["max"],
        )  # fmt: skip
        state = sorted(Path(spec.output, "checkpoints").glob("step-*/trainer_state.json"))[-1]
        assert json.loads(state.read_text()) == {
            "step": spec.steps, "cursor": spec.steps * spec.num_workers * spec.packs_per_step,
            "world_size": spec.num_workers,
        }  # fmt: skip
        previous, previous_export = weights, spec.output + "/export"
