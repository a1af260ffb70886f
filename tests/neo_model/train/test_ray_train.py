"""The trainer on Ray Train (V2) with two gloo workers: loss normalisation across ranks,
checkpoints on S3 (moto), a killed worker restarted from the last checkpoint on the very next
packs, and the three stages chained through their exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import s3fs
import torch

from neo_data.manifest import parse_manifest
from neo_model.testing import tiny_qwen3
from neo_model.train.ray_train import run_stage
from neo_model.weights import from_pretrained, from_qwen3
from tests.helpers import REPO, stage_1_keys

pytestmark = pytest.mark.slow

MANIFEST = """
name: tiny
stage: {stage}
data: {{curated: [unused], packed: {packed}}}
pack: {{seq_len: 384, max_pixels: 4096, min_pixels: 1024, buckets: [{{name: all, max_image_tokens: 4}}]}}
train:
  init: {init}
  output: {output}
  steps: {steps}
  log_every: 2
  checkpoint_every: 2
  num_workers: {workers}
  packs_per_step: {accum}
  trainable: {trainable}
  lr: 1.0e-3
  loss_weighting: sample_sqrt
  max_failures: 2
  keep_checkpoints: {keep}
"""


def manifest(packed, output, *, stage="pretrain", init="{kind: random, preset: debug}",
             steps=6, workers=2, accum=1, trainable="all", keep=3):  # fmt: skip
    text = MANIFEST.format(
        stage=stage, packed=packed, output=output, init=init, steps=steps, workers=workers,
        accum=accum, trainable=trainable, keep=keep,
    )  # fmt: skip
    return parse_manifest(text, "test.yaml")


def read_log(log_dir: Path, rank: int) -> list[dict]:
    path = log_dir / f"rank-{rank}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def assert_same_weights(a_dir, b_dir, atol=0.0):
    a, b = from_pretrained(a_dir), from_pretrained(b_dir)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0 if atol == 0 else 1e-4, atol=atol, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tiny_packed, s3_endpoint, tmp_path_factory, monkeypatch_module):
    """Two workers, 6 steps, a checkpoint every 2, the newest 2 kept; checkpoints and export
    on S3 (moto)."""
    logs = tmp_path_factory.mktemp("log-straight")
    monkeypatch_module.setenv("NEO_TRAIN_PACK_LOG", str(logs))
    s3fs.S3FileSystem().mkdir("neo-train-runs")
    out = "s3://neo-train-runs/straight"
    result = run_stage(manifest(tiny_packed, out, keep=2))
    monkeypatch_module.delenv("NEO_TRAIN_PACK_LOG")
    return out, logs, result


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_checkpoints_and_export_land_on_s3(uninterrupted, tmp_path):
    out, _, result = uninterrupted
    fs = s3fs.S3FileSystem()
    root = out.removeprefix("s3://")
    steps = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/checkpoints") if "step-" in p)
    assert steps == ["step-00000004", "step-00000006"]  # keep_checkpoints: 2 of the 3 made
    files = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/checkpoints/step-00000006")}
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer_state.json"} <= files
    state = json.loads(fs.cat(f"{root}/checkpoints/step-00000006/trainer_state.json"))
    assert state == {"step": 6, "cursor": 12, "world_size": 2}
    assert result.metrics["step"] == 6 and result.metrics["loss"] > 0
    fs.get(f"{root}/export/", str(tmp_path / "export") + "/", recursive=True)
    assert from_pretrained(tmp_path / "export").config.num_layers == 4


def test_two_ranks_equal_one_rank_accumulating_the_same_packs(uninterrupted, tiny_packed, tmp_path):
    """Loss normalisation: 2 ranks x 1 pack per step must step like 1 rank x 2 packs (the same
    positions), with per-sample 1/sqrt(n) weights spread unevenly over ranks."""
    out, _, _ = uninterrupted
    one = tmp_path / "one-rank.yaml"
    one.write_text(MANIFEST.format(
        stage="pretrain", packed=tiny_packed, output=tmp_path / "one", steps=6, workers=1,
        accum=2, trainable="all", init="{kind: random, preset: debug}", keep=3,
    ))  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.train_worker", "--manifest", str(one)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    s3fs.S3FileSystem().get(
        f"{out.removeprefix('s3://')}/export/", str(tmp_path / "two") + "/", recursive=True
    )
    # the logged loss (each step's global weighted mean) is where a normalisation error shows
    one_rank = [
        json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if x
    ]
    assert one_rank[-1]["step"] == uninterrupted[2].metrics["step"] == 6
    assert one_rank[-1]["loss"] == pytest.approx(uninterrupted[2].metrics["loss"], rel=1e-5)
    assert_nearly_same_weights(tmp_path / "one" / "export", tmp_path / "two")


def assert_nearly_same_weights(a_dir, b_dir, atol=2e-6, rtol=1e-4, share=1e-4, bound=1e-3):
    """The same weights up to summation order: 1 rank accumulating and 2 ranks all-reducing add
    the same gradients in another order, and AdamW turns a float-noise difference of a
    near-zero gradient into up to a step of ``lr`` (1e-3 here). So all but ``share`` of the
    elements must agree to ``atol``/``rtol``, and none may differ by more than ``bound``."""
    a, b = from_pretrained(a_dir), from_pretrained(b_dir)
    off = total = 0
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        diff = (p.float() - q.float()).abs()
        assert float(diff.max()) <= bound, (name, float(diff.max()))
        off += int((diff > atol + rtol * q.float().abs()).sum())
        total += diff.numel()
    assert off <= share * total, f"{off} of {total} elements differ beyond {atol}"


def test_a_killed_worker_restarts_from_the_last_checkpoint_on_the_very_next_packs(
    uninterrupted, ray_local, tiny_packed, tmp_path, monkeypatch
):
    _, straight_logs, _ = uninterrupted
    logs = tmp_path / "log"
    monkeypatch.setenv("NEO_TRAIN_PACK_LOG", str(logs))
    killed: list[dict] = []

    step_2 = tmp_path / "run" / "checkpoints" / "step-00000002"
    files = ("trainer_state.json", ".metadata", "__0_0.distcp", "__1_0.distcp")

    def kill_rank_1_after_the_step_2_checkpoint() -> None:
        """SIGKILL rank 1 once the step-2 checkpoint is uploaded (Ray uploads asynchronously;
        a checkpoint still in flight would be lost with the worker) and rank 1 is past it."""
        deadline = time.time() + 600
        while time.time() < deadline:
            if all((step_2 / f).exists() for f in files):
                time.sleep(1.0)  # Ray registers the checkpoint after its upload completes
                seen = [x for x in read_log(logs, 1) if x["step"] >= 3]
                if seen:
                    os.kill(seen[-1]["pid"], signal.SIGKILL)
                    killed.append(seen[-1])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1_after_the_step_2_checkpoint, daemon=True)
    killer.start()
    result = run_stage(manifest(tiny_packed, tmp_path / "run"))
    killer.join()
    assert killed, "no worker was killed"
    assert result.metrics["step"] == 6

    for rank in (0, 1):
        log = read_log(logs, rank)
        pids = [x["pid"] for x in log]
        restart = next(i for i, p in enumerate(pids) if p != pids[0])  # first step of new workers
        assert log[restart]["step"] in (3, 5)  # right after the step-2 (or step-4) checkpoint
        straight = {x["step"]: x["pack_id"] for x in read_log(straight_logs, rank)}
        after = {x["step"]: x["pack_id"] for x in log[restart:]}
        assert after == {s: straight[s] for s in after}
        assert max(after) == 6
    assert_same_weights(tmp_path / "run" / "export", _export_local(uninterrupted, tmp_path))


def _export_local(uninterrupted, tmp_path) -> Path:
    out, _, _ = uninterrupted
    local = tmp_path / "straight-export"
    s3fs.S3FileSystem().get(
        f"{out.removeprefix('s3://')}/export/", str(local) + "/", recursive=True
    )
    return local


def test_three_stages_chain_through_their_exports(ray_local, tiny_packed, tmp_path):
    qwen = tiny_qwen3(tie=True)
    qwen.save_pretrained(tmp_path / "qwen3")
    m1 = manifest(
        tiny_packed, tmp_path / "s1", steps=2, trainable="stage",
        init=f"{{kind: qwen3, path: {tmp_path / 'qwen3'}, pre_buffer_layers: 2}}",
    )  # fmt: skip
    stage1 = run_stage(m1)
    s1 = from_pretrained(stage1.export)
    assert s1.config.num_extra_layers == 2 and s1.config.num_hidden_layers == 2
    # stage 1 left the Qwen3 weights as they were and trained the new parts
    q = qwen.state_dict()
    torch.testing.assert_close(
        s1.language_model.model.embed_tokens.weight, q["model.embed_tokens.weight"], rtol=0, atol=0
    )
    for i in range(2):
        post = s1.language_model.model.layers[2 + i]
        torch.testing.assert_close(
            post.self_attn.q_proj.weight, q[f"model.layers.{i}.self_attn.q_proj.weight"],
            rtol=0, atol=0,
        )  # fmt: skip
        torch.testing.assert_close(
            post.mlp.up_proj.weight, q[f"model.layers.{i}.mlp.up_proj.weight"], rtol=0, atol=0
        )
    # every tensor of the stage-1 set moved from its start (the Qwen3 checkpoint widened to NEO
    # as stage 1 builds it); every other one is bit for bit what it was
    start = from_qwen3(tmp_path / "qwen3", num_extra_layers=2, seed=m1.train.seed).state_dict()
    trained, frozen = stage_1_keys(pre_buffer=2, post_llm=2)
    end = s1.state_dict()
    assert end.keys() == start.keys() == trained | frozen
    moved = {n for n in end if not torch.equal(end[n], start[n])}
    assert moved == trained, (sorted(trained - moved), sorted(moved - trained))

    stage2 = run_stage(manifest(
        tiny_packed, tmp_path / "s2", stage="midtrain", steps=2, trainable="stage",
        init=f"{{kind: neo, path: {stage1.export}}}",
    ))  # fmt: skip
    s2 = from_pretrained(stage2.export)
    changed = {
        n for (n, a), b in zip(s1.state_dict().items(), s2.state_dict().values(), strict=True)
        if not torch.equal(a, b)
    }  # fmt: skip
    assert "language_model.model.embed_tokens.weight" in changed
    assert "language_model.model.layers.3.mlp.up_proj.weight" in changed  # stage 2 trains all
    # ... and starts from stage 1's export: Adam moves a weight by about lr (1e-3) a step at most
    # (x1.5: bias correction), so 2 steps leave every weight within 3e-3 of it
    far = max(
        float((a - b).abs().max())
        for a, b in zip(s1.state_dict().values(), s2.state_dict().values(), strict=True)
    )
    assert far <= 1.5 * 2 * 1e-3, far

    stage3 = run_stage(manifest(
        tiny_packed, tmp_path / "s3", stage="sft", steps=2, trainable="stage",
        init=f"{{kind: neo, path: {stage2.export}}}",
    ))  # fmt: skip
    # the final export opens in `neo chat`
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "chat", "--checkpoint", stage3.export,
         "--max-new-tokens", "4", "Hello?"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]


class _Captured(Exception):
    pass


def test_no_secret_reaches_the_workers_runtime_env(monkeypatch, tmp_path, caplog):
    """Ray logs a job's runtime env at INFO and shows it in its state API: the secret key, the
    session token and a NEO_*_KEY never go there; region, endpoint and profile do."""
    import ray.train.torch

    from neo_data.manifest import load_manifest
    from neo_model.train import ray_train
    from tests.helpers import REPO

    fake = "FAKE-SECRET-d0e1f2a3b4c5"
    secrets = {"AWS_SECRET_ACCESS_KEY": fake, "AWS_SESSION_TOKEN": fake + "-token",
               "AWS_ACCESS_KEY_ID": "AKIA" + fake, "NEO_TEST_KEY": fake + "-neo"}  # fmt: skip
    settings = {"AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                "AWS_PROFILE": "train", "NEO_TRAIN_PACK_LOG": str(tmp_path)}  # fmt: skip
    for k, v in {**secrets, **settings}.items():
        monkeypatch.setenv(k, v)
    seen = {}

    class Trainer:
        def __init__(self, *args, **kwargs):
            seen["env"] = kwargs["run_config"].worker_runtime_env

        def fit(self):
            raise _Captured

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Trainer)
    manifest = load_manifest(REPO / "manifests" / "demo.yaml", {"train.output": str(tmp_path)})
    with caplog.at_level("DEBUG"), pytest.raises(_Captured):
        ray_train.run_stage(manifest)
    env = seen["env"]["env_vars"]
    assert fake not in repr(seen["env"]) and fake not in caplog.text
    assert not set(secrets) & set(env)
    assert {k: env[k] for k in settings} == settings
