"""The training loop without Ray: data order and resume, loss normalisation, checkpoint round
trip, stage export."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neo_data.encoding.tokens import IGNORE_INDEX, IMG_CONTEXT_ID
from neo_data.loader import BlendOrder, PackOrder, PackStream
from neo_data.manifest.train import TrainSpec
from neo_model.attention import PAD_SAMPLE
from neo_model.config import debug
from neo_model.model import NeoChatModel, normalize_image
from neo_model.train.loop import _pixel_budget, device_pixels, model_inputs, train_step
from neo_model.weights import from_pretrained
from tests.helpers import REPO, UNSHARE, free_port


def test_order_is_seeded_covers_every_pack_each_epoch_and_ranks_are_disjoint():
    order = PackOrder([3, 4, 2], seed=7)
    epoch0 = [order.at(p) for p in range(9)]
    assert sorted(epoch0) == sorted(order.refs)
    assert [order.at(p) for p in range(9, 18)] != epoch0  # a new permutation per epoch
    assert [PackOrder([3, 4, 2], seed=7).at(p) for p in range(30)] == [
        order.at(p) for p in range(30)
    ]
    assert [PackOrder([3, 4, 2], seed=8).at(p) for p in range(9)] != epoch0


def test_stream_resumes_with_the_very_next_packs(tiny_packed):
    world = 2
    full = [
        [
            p.pack_id
            for _, p in zip(range(6), PackStream(tiny_packed, r, world, seed=3), strict=False)
        ]
        for r in range(world)
    ]
    # an interrupted run consumed 2 steps of 1 pack per rank: cursor = 2 * world
    resumed = [
        [
            p.pack_id
            for _, p in zip(
                range(4), PackStream(tiny_packed, r, world, seed=3, start=2 * world), strict=False
            )
        ]
        for r in range(world)
    ]
    assert [f[2:] for f in full] == resumed
    assert not set(full[0]) & set(full[1][:2])  # ranks read different packs


def _packs_needing_padding(packed: str, count: int) -> list:
    """Real packs with several samples and images whose length is not a multiple of 128."""
    found = []
    for _, p in zip(range(64), PackStream(packed, 0, 1, seed=0), strict=False):
        if p.num_tokens % 128 and len(p.sample_lengths) > 1 and p.images:
            found.append(p)
        if len(found) == count:
            return found
    raise AssertionError(f"fewer than {count} packs of {packed} need padding to 128")


def _samples(pack) -> list[tuple[int, int]]:
    """``(start, end)`` token offsets of each sample of a pack."""
    cu = pack.cu_seqlens.tolist()
    return list(zip(cu[:-1], cu[1:], strict=True))


def test_padding_to_128_adds_an_unsupervised_sample_of_its_own(tiny_packed):
    """What CUDA trains on (``pad_to_multiple``: 128), checked on CPU: the pack's tokens as they
    are, then padding that is its own sample, carries no labels and holds no image tokens."""
    (pack,) = _packs_needing_padding(tiny_packed, 1)
    n, cpu = pack.num_tokens, torch.device("cpu")
    plain, padded = model_inputs(pack, cpu, 1), model_inputs(pack, cpu, 128)
    length = -(-n // 128) * 128
    assert length > n and length % 128 == 0
    assert plain["input_ids"].shape == (1, n) and padded["input_ids"].shape == (1, length)
    ids = np.concatenate([np.full(b - a, k) for k, (a, b) in enumerate(_samples(pack))])
    for name, column in pack.columns.items():
        assert padded[name][0, :n].tolist() == plain[name][0].tolist() == column.tolist(), name
    assert plain["sample_ids"][0].tolist() == padded["sample_ids"][0, :n].tolist() == ids.tolist()
    assert set(padded["labels"][0, n:].tolist()) == {IGNORE_INDEX}
    assert set(padded["sample_ids"][0, n:].tolist()) == {PAD_SAMPLE} and PAD_SAMPLE not in ids
    assert set(padded["image_ordinal"][0, n:].tolist()) == {-1}
    assert IMG_CONTEXT_ID not in padded["input_ids"][0, n:].tolist()
    assert len(padded["pixel_values"]) == len(plain["pixel_values"]) == len(pack.images)
    for a, b in zip(padded["pixel_values"], plain["pixel_values"], strict=True):
        assert torch.equal(a, b)


def test_a_step_on_packs_padded_to_128_equals_the_step_on_unpadded_packs(
    tiny_packed, one_rank_group
):
    """``train_step`` with ``pad_to=128`` (CUDA) and ``pad_to=1`` (CPU) on the same two real
    packs: the same loss, gradient norm and gradients, to float32 round-off (padding with labels
    would add its own loss and gradients)."""
    packs = _packs_needing_padding(tiny_packed, 2)
    spec = TrainSpec(
        init={"kind": "random"}, output="unused", steps=1, packs_per_step=2,
        loss_weighting="sample_sqrt", grad_clip=1e9,
    )  # fmt: skip
    torch.manual_seed(0)
    model = NeoChatModel(debug())
    results = []
    for pad_to in (1, 128):
        model.zero_grad(set_to_none=True)
        loss, grad_norm = map(float, train_step(model, packs, spec, torch.device("cpu"), 1, pad_to))
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss, grad_norm, grads))
    (loss, norm, grads), (loss_pad, norm_pad, grads_pad) = results
    assert math.isfinite(loss) and loss > 0 and norm > 0
    assert loss_pad == pytest.approx(loss, rel=1e-6)
    assert norm_pad == pytest.approx(norm, rel=1e-5)
    assert grads.keys() == grads_pad.keys() == {n for n, _ in model.named_parameters()}
    for name, g in grads.items():
        torch.testing.assert_close(grads_pad[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_a_step_is_the_gradient_of_the_mean_loss_over_all_its_supervised_tokens(
    tiny_packed, one_rank_group
):
    """Gradient accumulation: a step over two packs (``packs_per_step: 2``) returns the mean
    token loss over both packs' supervised tokens and leaves its gradient, computed here from
    each pack's own mean loss (the model's logits path) weighted by its supervised count."""
    packs = _packs_needing_padding(tiny_packed, 2)
    assert packs[0].num_supervised != packs[1].num_supervised  # unequal weights matter
    spec = TrainSpec(
        init={"kind": "random"}, output="unused", steps=1, packs_per_step=2, grad_clip=1e9
    )
    torch.manual_seed(0)
    model = NeoChatModel(debug())
    loss = float(train_step(model, packs, spec, torch.device("cpu"), 1, 1)[0])
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    total = sum(p.num_supervised for p in packs)
    reference = 0.0
    for p in packs:
        b = model_inputs(p, torch.device("cpu"), 1)
        out = model(
            b["input_ids"], b["t_index"], b["h_index"], b["w_index"], b["image_ordinal"],
            sample_ids=b["sample_ids"], pixel_values=b["pixel_values"], labels=b["labels"],
        )  # fmt: skip
        reference = reference + out.loss * p.num_supervised / total
    reference.backward()
    assert loss == pytest.approx(float(reference.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def _trainer_cmd(manifest: Path, out: Path, sets: list[str]) -> list[str]:
    args = [sys.executable, "-m", "pipelines.train_worker", "--manifest", str(manifest)]
    for s in [f"train.output={out}", *sets]:
        args += ["--set", s]
    return args


def _env(log_dir: Path) -> dict:
    return {**os.environ, "NEO_TRAIN_PACK_LOG": str(log_dir)}


def _log(log_dir: Path, rank: int = 0) -> list[dict]:
    return [json.loads(x) for x in (log_dir / f"rank-{rank}.jsonl").read_text().split("\n") if x]


@pytest.fixture(scope="module")
def manifest_file(tiny_packed, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("m") / "train.yaml"
    path.write_text(
        f"""
name: tiny
stage: pretrain
data: {{curated: [unused], packed: {tiny_packed}}}
pack: {{seq_len: 384, max_pixels: 4096, min_pixels: 1024, buckets: [{{name: all, max_image_tokens: 4}}]}}
train:
  init: {{kind: random, preset: debug}}
  output: unused
  steps: 6
  log_every: 2
  checkpoint_every: 2
  trainable: all
  lr: 1.0e-3
"""
    )
    return path


def test_killed_run_resumes_from_its_checkpoint_exactly(manifest_file, tmp_path):
    """kill -9 a one-process run once its step-2 checkpoint is complete; the rerun continues
    from the latest complete checkpoint with the very next packs, and ends with the same
    weights, bit for bit, as a run that was never interrupted."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run = subprocess.run(
        _trainer_cmd(manifest_file, straight, []), cwd=REPO, env=_env(tmp_path / "log-straight"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4, 6]  # every log_every steps
    assert all(math.isfinite(m["loss"]) and m["tokens_per_s"] > 0 for m in metrics)
    # the LR a log line reports is the optimizer's after that step: warm-up over 1 step (1% of
    # 6, at least one), then a cosine from the peak (1e-3) to 0.1x (pretrain) after the last step
    cosine = [1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * (s - 1) / 5))) for s in (2, 4, 6)]
    assert [m["lr"] for m in metrics] == pytest.approx(cosine, rel=1e-9)

    proc = subprocess.Popen(
        _trainer_cmd(manifest_file, resumed, []), cwd=REPO, env=_env(tmp_path / "log-resumed"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    done = resumed / "checkpoints/step-00000002/.done-rank0"
    deadline = time.time() + 300
    while not done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "export").exists(), "the run ended before it could be killed"
    killed_steps = [x["step"] for x in _log(tmp_path / "log-resumed")]

    run = subprocess.run(
        _trainer_cmd(manifest_file, resumed, []), cwd=REPO, env=_env(tmp_path / "log-resumed"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "from step 2 (cursor 2)" in run.stderr or "from step 4 (cursor 4)" in run.stderr
    logged = _log(tmp_path / "log-resumed")
    after = logged[len(killed_steps) :]
    assert after and after[0]["step"] in (3, 5)  # the step after the restored checkpoint
    straight_log = {x["step"]: x["pack_id"] for x in _log(tmp_path / "log-straight")}
    assert {x["step"]: x["pack_id"] for x in logged} == straight_log
    assert all(straight_log[x["step"]] == x["pack_id"] for x in after)

    a, b = from_pretrained(straight / "export"), from_pretrained(resumed / "export")
    # the export carries the pixel budget the packs were made with (the manifest's pack:)
    assert (a.config.min_pixels, a.config.max_pixels) == (1024, 4096)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # the resumed run logs the same learning rates (the schedule restored with the step)
    resumed_metrics = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert {m["step"]: m["lr"] for m in resumed_metrics} == {m["step"]: m["lr"] for m in metrics}
    state = json.loads((resumed / "checkpoints/step-00000006/trainer_state.json").read_text())
    assert state == {"step": 6, "cursor": 6, "world_size": 1}
    # keep_checkpoints (3) complete checkpoints are kept
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [
        "step-00000002", "step-00000004", "step-00000006",
    ]  # fmt: skip


def test_torchrun_two_ranks_equal_one_process_with_the_same_global_batch(
    netns, manifest_file, tmp_path
):
    """``torchrun`` with 2 CPU ranks (gloo) trains on the very packs, and to the same weights,
    as one process taking both ranks' packs per step (``packs_per_step: 2``): the step's loss
    is normalised by the weight total over every rank, so data parallelism changes nothing
    but the summation order. torchrun's store binds every address, so it runs in a network
    namespace of its own (only ``lo``)."""
    one, two = tmp_path / "one", tmp_path / "two"
    sets = ["train.steps=3", "train.checkpoint_every=3"]
    run = subprocess.run(
        _trainer_cmd(manifest_file, one, [*sets, "train.packs_per_step=2"]), cwd=REPO,
        env=_env(tmp_path / "log-one"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1",
        f"--master-port={free_port()}", "-m", "pipelines.train_worker",
    ]  # fmt: skip
    trainer_args = _trainer_cmd(manifest_file, two, sets)[
        3:
    ]  # after `python -m pipelines.train_worker`
    script = "ip link set lo up && exec " + " ".join(
        shlex.quote(a) for a in torchrun + trainer_args
    )
    run = subprocess.run(
        [*UNSHARE, "sh", "-c", script], cwd=REPO, env=_env(tmp_path / "log-two"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 ranks on cpu" in run.stderr

    one_log = _log(tmp_path / "log-one")
    two_logs = [_log(tmp_path / "log-two", rank) for rank in (0, 1)]
    for rank, log in enumerate(two_logs):  # rank r trains global positions r, r + 2, ...
        assert [x["position"] for x in log] == [rank, rank + 2, rank + 4]
    merged = sorted((x["step"], x["position"], x["pack_id"]) for log in two_logs for x in log)
    assert merged == sorted((x["step"], x["position"], x["pack_id"]) for x in one_log)

    # Adam moves a weight by about lr (1e-3) a step whatever the gradient's scale: a rank
    # weighted wrongly would show as differences of that size; summation order gives ~1e-5.
    a, b = from_pretrained(one / "export"), from_pretrained(two / "export")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)
    # Adam hides a gradient scaled by a constant; the logged loss and gradient norm do not: both
    # runs log the same global mean loss and the norm of the same global gradient
    logged = [
        [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        for out in (one, two)
    ]
    assert [m["step"] for m in logged[0]] == [m["step"] for m in logged[1]] == [2, 3]
    for m1, m2 in zip(*logged, strict=True):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    # the data cursor counts the packs of every rank
    state = json.loads((two / "checkpoints/step-00000003/trainer_state.json").read_text())
    assert state == {"step": 3, "cursor": 6, "world_size": 2}


def test_a_run_on_s3_resumes_from_its_checkpoint_read_in_place(manifest_file, s3_bucket, tmp_path):
    """One process, checkpoints on S3 (moto): a second run of the same output with more steps
    restores the step-2 checkpoint straight from S3 (DCP's fsspec reader, no local copy) and
    trains on the very next packs."""
    out = f"{s3_bucket}/resume"
    log_dir = tmp_path / "log"
    for steps in (2, 4):
        run = subprocess.run(
            _trainer_cmd(manifest_file, out, [f"train.steps={steps}", "train.checkpoint_every=2"]),
            cwd=REPO, env=_env(log_dir), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
    assert "from step 2 (cursor 2)" in run.stderr
    assert f"restoring from {out}/checkpoints/step-00000002" in run.stderr
    assert [x["position"] for x in _log(log_dir)] == [0, 1, 2, 3]


def test_a_stage_trains_on_a_mixture_of_packed_datasets(manifest_file, tiny_packed, tmp_path):
    """``train.data`` as a mixture: the packs come from both datasets in the blend's order."""
    other = tmp_path / "other-packed"
    shutil.copytree(tiny_packed, other)
    mixture = f"[{{path: {tiny_packed}, weight: 3}}, {{path: {other}, weight: 1}}]"
    run = subprocess.run(
        _trainer_cmd(manifest_file, tmp_path / "out",
                     ["train.steps=4", "train.checkpoint_every=3", f"train.data={mixture}"]),
        cwd=REPO, env=_env(tmp_path / "log"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    logged = [(x["position"], x["dataset"]) for x in _log(tmp_path / "log")]
    blend = BlendOrder([3, 1])
    assert logged == [(p, blend.at(p)[0]) for p in range(4)]
    assert {d for _, d in logged} == {0, 1}
    # every checkpoint_every steps, and at the last step whatever the interval
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000004"]


def test_a_mixture_of_datasets_packed_for_different_pixels_is_refused():
    class Dataset:
        def __init__(self, lo: int, hi: int):
            self.index = {"pixels": {"min": lo, "max": hi}}

    class Stream:
        datasets = [Dataset(1024, 4096), Dataset(1024, 8192)]

    with pytest.raises(
        ValueError, match=r"train.data: b/packed was packed with pixels .*max.*8192"
    ):
        _pixel_budget(Stream(), [("a/packed", 1.0), ("b/packed", 1.0)])


def test_pixels_travel_as_uint8_and_normalise_to_the_float_values_of_the_cpu_path():
    """``device_pixels`` (the step's copy of a loader image, normalised where it lands) gives
    bit for bit what ``normalize_image`` of the decoded image gave on the CPU, from a numpy
    array (read-only too, as Arrow and PIL hand them out) and from a uint8 tensor."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    reference = normalize_image(Image.fromarray(array))
    frozen = array.copy()
    frozen.flags.writeable = False
    for image in (array, frozen, torch.from_numpy(array.copy())):
        out = device_pixels(image, torch.device("cpu"))
        assert out.dtype == torch.float32 and out.shape == (3, 64, 96)
        assert torch.equal(out, reference)
    if torch.cuda.is_available():  # the trainer's path: a pinned uint8 copy, normalised on GPU
        pinned = torch.from_numpy(array.copy()).pin_memory()
        assert torch.equal(device_pixels(pinned, torch.device("cuda")).cpu(), reference)
    with pytest.raises(ValueError, match=r"expected an RGB uint8 image \[H, W, 3\], got torch"):
        device_pixels(torch.zeros(4, 4, 3), torch.device("cpu"))
