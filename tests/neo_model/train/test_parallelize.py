"""The model's layout over ranks, on CPU gloo: gradient accumulation under FSDP2 (one
reduction per step, the gradient of one big step), selective activation checkpointing (the
same gradients, the matmuls not recomputed), hybrid sharding (a 2-D mesh, sizes checked)."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import Replicate, Shard
from torch.utils._python_dispatch import TorchDispatchMode

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import IGNORE_INDEX, image_token_ids
from neo_data.loader import LoadedPack, decode_pack
from neo_data.manifest.train import TrainSpec
from neo_data.pack.packing import build_pack
from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.train.loop import model_inputs, train_step
from neo_model.train.parallelize import Env, mesh_shape, parallelize

CPU = torch.device("cpu")


def _sample(rng: np.random.Generator, name: str, grid: tuple[int, int] | None) -> dict:
    """An encoded sample: random text around one noise JPEG of ``grid`` tokens (or none)."""
    text = rng.integers(0, 5000, size=int(rng.integers(6, 20))).tolist()
    ids = text[:3] + (image_token_ids(*grid) if grid else []) + text[3:]
    t, h, w, ordinal = thw_indices(ids, [grid] if grid else [])
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    labels[:-1] = np.where(ordinal[1:] < 0, np.asarray(ids[1:]), IGNORE_INDEX)
    images, heights, widths = [], [], []
    if grid:
        pixels = rng.integers(0, 256, size=(grid[0] * 32, grid[1] * 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        images, heights, widths = [buf.getvalue()], [grid[0] * 32], [grid[1] * 32]
    return {
        "sample_id": name, "source": "test", "text_only": grid is None,
        "input_ids": np.asarray(ids, dtype=np.int32), "labels": labels, "t_index": t,
        "h_index": h, "w_index": w, "image_ordinal": ordinal, "images": images,
        "image_heights": heights, "image_widths": widths,
    }  # fmt: skip


def packs(count: int, seed: int) -> list[LoadedPack]:
    """``count`` packs of two or three samples with images, of unequal supervised counts."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        grids = [(1, 2), None, (2, 1)][: 2 + k % 2]
        row = build_pack(f"p{k}", "b", [_sample(rng, f"s{k}-{j}", g) for j, g in enumerate(grids)])
        out.append(decode_pack(row, k, 0, k, "test"))
    return out


def sharded(spec: TrainSpec, env: Env, state: dict) -> NeoChatModel:
    """The debug model laid out by ``parallelize`` and loaded with ``state``."""
    with torch.device("meta"):
        model = NeoChatModel(debug())
    parallelize(model, spec, env)
    model.to_empty(device=env.device)
    set_model_state_dict(  # on a copy: the broadcast replaces the dict's values
        model,
        dict(state),
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    return model


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }


def _spec(**fields) -> TrainSpec:
    return TrainSpec(init={"kind": "random"}, output="x", steps=1, grad_clip=1e9, **fields)


def test_accumulating_under_fsdp2_reduces_once_and_equals_one_big_step(one_rank_group):
    """Three micro-batches on a sharded model: each trained parameter's sharded gradient is
    produced once (one reduce-scatter, at the last micro-batch) and equals the plain model's
    accumulated gradient, itself that of one backward over the step's weighted loss."""
    batch = packs(3, seed=0)
    assert len({p.num_supervised for p in batch}) > 1
    spec = _spec(packs_per_step=3, activation_checkpointing="none")
    torch.manual_seed(0)
    plain = NeoChatModel(debug())
    model = sharded(spec, Env(0, 1, CPU, False), plain.state_dict())
    reductions: list[str] = []
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda _, n=name: reductions.append(n))
    loss, grad_norm = train_step(model, batch, spec, CPU, 1, 1)
    assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float64
    assert sorted(reductions) == sorted(n for n, _ in model.named_parameters())

    # the plain model's train_step: one backward per pack, no FSDP; test_loop checks it is the
    # gradient of one backward over the step's weighted mean loss (the big step)
    ref_loss, ref_norm = train_step(plain, batch, spec, CPU, 1, 1)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    expected = full_grads(plain)
    ours = full_grads(model)
    assert ours.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(ours[name], g, rtol=1e-5, atol=1e-7, msg=name)
    assert float(grad_norm.full_tensor()) == pytest.approx(float(ref_norm), rel=1e-5)


class _OpsInBackward(TorchDispatchMode):
    """Counts ops by name while active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_selective_checkpointing_recomputes_the_cheap_ops_but_not_the_matmuls(one_rank_group):
    """The same loss and gradients with ``none``, ``full`` and ``selective``; in the backward
    pass ``full`` recomputes each layer (its matmuls and its SiLU), ``selective`` recomputes
    the SiLU but runs no more matmuls than ``none``."""
    (pack,) = packs(1, seed=1)
    torch.manual_seed(0)
    state = NeoChatModel(debug()).state_dict()
    runs = {}
    for mode in ("none", "full", "selective"):
        spec = _spec(activation_checkpointing=mode)
        model = sharded(spec, Env(0, 1, CPU, False), state)
        b = model_inputs(pack, CPU, 1)
        out = model(
            b["input_ids"], b["t_index"], b["h_index"], b["w_index"], b["image_ordinal"],
            sample_ids=b["sample_ids"], pixel_values=b["pixel_values"], labels=b["labels"],
        )  # fmt: skip
        with _OpsInBackward() as ops:
            out.loss.backward()
        runs[mode] = (float(out.loss.detach()), full_grads(model), ops.counts)
    layers = debug().num_layers
    (loss, grads, none), (_, _, full), (_, _, sel) = (
        runs[m] for m in ("none", "full", "selective")
    )
    assert none.get("silu", 0) == 0
    assert full.get("silu", 0) == sel.get("silu", 0) == layers
    mm = {m: sum(r[2].get(op, 0) for op in ("mm", "addmm", "bmm")) for m, r in runs.items()}
    assert mm["selective"] == mm["none"] < mm["full"]
    for mode in ("full", "selective"):
        assert runs[mode][0] == pytest.approx(loss, rel=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(runs[mode][1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_the_checkpointing_spelling_of_older_manifests_still_loads():
    assert _spec(activation_checkpointing=True).activation_checkpointing == "full"
    assert _spec(activation_checkpointing=False).activation_checkpointing == "none"
    assert _spec().activation_checkpointing == "full"


@pytest.mark.parametrize(
    ("parallel", "world", "shape"),
    [({}, 4, None), ({"shard_size": 2}, 4, (2, 2)), ({"replicate": 2}, 2, (2, 1)),
     ({"shard_size": 8, "replicate": 2}, 16, (2, 8))],
)  # fmt: skip
def test_hybrid_sharding_takes_the_mesh_from_shard_size_and_replicate(parallel, world, shape):
    assert mesh_shape(_spec(parallel=parallel), world) == shape


@pytest.mark.parametrize(
    ("parallel", "world"),
    [({"shard_size": 3}, 4), ({"replicate": 3}, 4), ({"shard_size": 2, "replicate": 2}, 8)],
)
def test_a_parallel_layout_that_does_not_tile_the_world_is_refused(parallel, world):
    with pytest.raises(ValueError, match=rf"train.parallel: .* the run's {world} ranks"):
        mesh_shape(_spec(parallel=parallel), world)


def _hsdp_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """One rank of the HSDP check: replicate=2 x shard_size=1, its own pack, grads saved."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    state = NeoChatModel(debug()).state_dict() if rank == 0 else {}
    spec = _spec(parallel={"replicate": 2}, activation_checkpointing="none")
    model = sharded(spec, Env(rank, world, CPU, False), state)
    mesh = model.language_model.model.embed_tokens.weight.device_mesh
    placements = model.language_model.model.embed_tokens.weight.placements
    loss, _ = train_step(model, [packs(2, seed=2)[rank]], spec, CPU, world, 1)
    dist.all_reduce(loss)
    grads = full_grads(model)
    if rank == 0:
        result = (mesh.mesh_dim_names, tuple(mesh.shape), placements, float(loss), grads)
        Path(out).write_bytes(pickle.dumps(result))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_hybrid_sharded_equal_one_rank_accumulating_their_packs(one_rank_group, tmp_path):
    """Two gloo processes, ``replicate: 2`` (``shard_size`` 1): a 2-D (replicate, shard)
    mesh, replicated-and-sharded parameters, and the step's gradient and loss of one process
    taking both packs."""
    ctx = multiprocessing.get_context("spawn")
    out = tmp_path / "rank0.pkl"
    procs = [
        ctx.Process(target=_hsdp_rank, args=(r, 2, str(tmp_path / "init"), str(out)))
        for r in range(2)
    ]
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK") if k in os.environ}
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    os.environ.update(env)
    assert [p.exitcode for p in procs] == [0, 0]
    names, shape, placements, loss, grads = pickle.loads(out.read_bytes())
    assert names == ("replicate", "shard") and shape == (2, 1)
    assert placements == (Replicate(), Shard(0))

    spec = _spec(packs_per_step=2, activation_checkpointing="none")
    torch.manual_seed(0)
    plain = NeoChatModel(debug())
    ref_loss, _ = train_step(plain, packs(2, seed=2), spec, CPU, 1, 1)
    assert loss == pytest.approx(float(ref_loss), rel=1e-6)
    expected = full_grads(plain)
    assert grads.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
