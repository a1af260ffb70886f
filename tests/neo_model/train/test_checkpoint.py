"""The fsspec checkpoint store (runs without Ray): a checkpoint counts once every rank of its
world has marked it done; the newest ``keep`` complete ones stay. The export without a random
init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from neo_model.config import debug
from neo_model.hf_export import write_hf_extras
from neo_model.model import NeoChatModel
from neo_model.train.checkpoint import TRAINER_STATE, FsspecStore, export
from neo_model.weights import save_pretrained


def _saved(tmp_path: Path, step: int, rank: int, world: int) -> Path:
    """What ``save_train_state`` leaves locally: the rank's shard, rank 0's trainer state."""
    local = tmp_path / f"local-{step}-{rank}"
    local.mkdir()
    (local / f"__{rank}_0.distcp").write_bytes(b"shard")
    if rank == 0:
        (local / TRAINER_STATE).write_text(json.dumps({"step": step, "world_size": world}))
    return local


def test_the_newest_keep_complete_checkpoints_stay_and_the_latest_is_restored(tmp_path):
    root = tmp_path / "checkpoints"
    store = FsspecStore(str(root), rank=0, world_size=1, keep=2)
    assert store.restore() is None
    for step in (2, 4, 6, 8):
        store.publish(_saved(tmp_path, step, 0, 1), step, {"step": step})
        store.close()
        assert store.restore() == str(root / f"step-{step:08d}")
    assert sorted(p.name for p in root.iterdir()) == ["step-00000006", "step-00000008"]
    assert sorted(p.name for p in (root / "step-00000008").iterdir()) == [
        ".done-rank0", "__0_0.distcp", TRAINER_STATE,
    ]  # fmt: skip
    assert not (tmp_path / "local-8-0").exists()  # the local copy is gone once uploaded


def test_a_checkpoint_counts_only_once_every_rank_has_uploaded_its_part(tmp_path):
    root = tmp_path / "checkpoints"
    ranks = [FsspecStore(str(root), rank=r, world_size=2, keep=3) for r in (0, 1)]
    for step in (1, 2):
        ranks[0].publish(_saved(tmp_path, step, 0, 2), step, {})
        ranks[0].close()
        assert ranks[0].restore() == (None if step == 1 else str(root / "step-00000001"))
        ranks[1].publish(_saved(tmp_path, step, 1, 2), step, {})
        ranks[1].close()
        assert ranks[0].restore() == ranks[1].restore() == str(root / f"step-{step:08d}")


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head"])
def test_export_builds_no_random_model_and_writes_the_files_of_a_random_init_then_load(
    tied, one_rank_group, tmp_path, monkeypatch
):
    """The export of an FSDP2 model (one gloo rank) is byte for byte what loading its full state
    into a randomly initialised plain model and saving that writes (the old path), and it
    builds that model on the meta device: no parameter initialisation runs."""
    cfg = debug().replace(tie_word_embeddings=tied, rope_theta_vision=1000.0)
    torch.manual_seed(0)
    model = NeoChatModel(cfg)
    mesh = dist.device_mesh.init_device_mesh("cpu", (1,))
    for layer in model.language_model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    reference = NeoChatModel(cfg)  # the old path: random init, then load
    reference.load_state_dict({k: v.float() for k, v in full.items()})
    save_pretrained(reference, tmp_path / "reference")
    write_hf_extras(str(tmp_path / "reference"), cfg)  # every export is a complete HF folder

    inits = []
    real_init = torch.nn.init.kaiming_uniform_
    monkeypatch.setattr(
        torch.nn.init,
        "kaiming_uniform_",
        lambda *a, **k: (
            inits.append((a[0] if a else k["tensor"]).device.type) or real_init(*a, **k)
        ),
    )
    export(model, cfg, str(tmp_path / "export"), rank=0)
    assert inits and set(inits) == {"meta"}  # Linear/Conv initialisers touched no memory
    ours = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert ours == sorted(p.name for p in (tmp_path / "reference").iterdir())
    for name in ours:
        a, b = (
            (tmp_path / "export" / name).read_bytes(),
            (tmp_path / "reference" / name).read_bytes(),
        )
        assert a == b, name
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["vision_config"]["rope_theta_vision"] == 1000.0
