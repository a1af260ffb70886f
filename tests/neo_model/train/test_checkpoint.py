"""The fsspec checkpoint store (runs without Ray): a checkpoint counts once every rank of its
world has marked it done; the newest ``keep`` complete ones stay."""

from __future__ import annotations

import json
from pathlib import Path

from neo_model.train.checkpoint import TRAINER_STATE, FsspecStore


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
