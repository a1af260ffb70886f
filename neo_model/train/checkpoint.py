"""Sharded training checkpoints (``torch.distributed.checkpoint``) in the run's storage.

Every rank saves its shard of the model and optimizer state with DCP into a local staging
directory (fast: local disk), plus, from rank 0, ``trainer_state.json`` (step, data cursor, world
size). Publishing that directory to the run's storage (local path or ``s3://``) happens off the
training thread:

* under Ray Train, ``ray.train.report(checkpoint=..., checkpoint_upload_mode=ASYNC)``: Ray uploads
  every worker's files into one checkpoint directory, keeps the newest N and hands the latest
  back through ``ray.train.get_checkpoint()`` when it restarts a failed worker group;
* without Ray (one process, torchrun), :class:`FsspecStore` uploads in a background thread to
  ``<output>/checkpoints/step-XXXXXXXX/``; each rank marks its part done with
  ``.done-rank<r>``, and a checkpoint is complete (and eligible for resume) only when every rank
  of its world has marked it.

Restoring reads the checkpoint where it is (``restore()`` returns its URL): DCP reads each
rank's items by byte range -- from a local directory, or from ``s3://`` through fsspec -- so a
rank fetches its own shards, not the whole checkpoint.

:func:`save_train_state` and :func:`restore_train_state` are the trainer's two ends of this (the
sharded model and optimizer state plus the trainer state); :func:`export` writes the trained
weights once more, whole, in the released NEO layout that ``neo chat``, ``neo serve`` and the
next stage's ``train.init`` read.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from neo_data.format.storage import is_local, join, url_to_fs
from neo_data.manifest.train import TrainSpec
from neo_model.config import NeoConfig
from neo_model.hf_export import write_hf_extras
from neo_model.model import NeoChatModel
from neo_model.weights import save_pretrained

if TYPE_CHECKING:
    from neo_model.train.parallelize import Env

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoints"  # <output>/checkpoints/step-XXXXXXXX/
EXPORT_DIR = "export"  # <output>/export/: the trained weights in the released NEO layout


class CheckpointStore(Protocol):
    def restore(self) -> str | None:
        """The URL (local path or ``s3://``) of the latest complete checkpoint, or None."""

    def publish(self, local_dir: Path, step: int, metrics: dict[str, Any]) -> None:
        """Hand a saved checkpoint directory over for upload (it may be deleted afterwards)."""

    def report(self, metrics: dict[str, Any]) -> None:
        """Metrics without a checkpoint."""

    def close(self) -> None:
        """Wait for pending uploads."""


class RayStore:
    """Checkpoints through Ray Train (storage, keep-N and restarts are Ray's)."""

    def restore(self) -> str | None:
        import pyarrow.fs
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
            return checkpoint.path
        if isinstance(checkpoint.filesystem, pyarrow.fs.S3FileSystem):
            return f"s3://{checkpoint.path}"  # our storage(): same endpoint settings as fsspec's
        local = Path(tempfile.mkdtemp(prefix="neo-restore-"))  # another filesystem: a copy
        checkpoint.to_directory(str(local))
        return str(local)

    def publish(self, local_dir: Path, step: int, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(local_dir)),
            checkpoint_dir_name=f"step-{step:08d}",
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)

    def close(self) -> None:
        pass


class FsspecStore:
    """Checkpoints under ``<root>/step-XXXXXXXX/`` on any fsspec filesystem, uploaded in a
    background thread; keeps the newest ``keep`` complete ones (rank 0 prunes)."""

    def __init__(self, root: str, rank: int, world_size: int, keep: int):
        self.fs, self.root = url_to_fs(root)
        self.url = root.rstrip("/")
        self.rank, self.world_size, self.keep = rank, world_size, keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _complete(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        done = []
        for d in sorted(self.fs.ls(self.root, detail=False)):
            name = d.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith("step-"):
                continue
            files = {p.rsplit("/", 1)[-1] for p in self.fs.ls(d, detail=False)}
            state = join(d, TRAINER_STATE)
            if TRAINER_STATE not in files:
                continue
            world = json.loads(self.fs.cat_file(state))["world_size"]
            if all(f".done-rank{r}" in files for r in range(world)):
                done.append(d)
        return done

    def restore(self) -> str | None:
        done = self._complete()
        if not done:
            return None
        url = done[-1] if "://" not in self.url else self.fs.unstrip_protocol(done[-1])
        log.info("restoring from %s", url)
        return url

    def publish(self, local_dir: Path, step: int, metrics: dict[str, Any]) -> None:
        self.close()  # one upload at a time; raises if the previous one failed
        target = join(self.root, f"step-{step:08d}")

        def upload() -> None:
            try:
                self.fs.makedirs(target, exist_ok=True)
                for f in sorted(local_dir.iterdir()):
                    self.fs.put_file(str(f), join(target, f.name))
                self.fs.pipe_file(join(target, f".done-rank{self.rank}"), b"")
                shutil.rmtree(local_dir, ignore_errors=True)
                if self.rank == 0:
                    self._prune()
            except OSError as e:  # surfaced at the next publish or at close
                self._error = e

        self._thread = threading.Thread(target=upload, name="neo-ckpt-upload", daemon=True)
        self._thread.start()

    def _prune(self) -> None:
        done = self._complete()
        for old in done[: max(0, len(done) - self.keep)]:
            self.fs.rm(old, recursive=True)

    def report(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"uploading a checkpoint to {self.url} failed: {error}") from error


def open_store(spec: TrainSpec, env: Env) -> CheckpointStore:
    """Ray Train's store under Ray, else checkpoints in ``<output>/checkpoints`` with fsspec."""
    if env.under_ray:
        return RayStore()
    return FsspecStore(
        join(spec.output, CHECKPOINT_DIR), env.rank, env.world_size, spec.keep_checkpoints
    )


def save_train_state(
    model: NeoChatModel,
    opt: torch.optim.Optimizer,
    step: int,
    cursor: int,
    env: Env,
    store: CheckpointStore,
    metrics: dict[str, Any],
) -> None:
    """Save every rank's shard of the model and optimizer state (DCP, collective) and rank 0's
    trainer state (step, data cursor, world size) locally, then hand them to ``store``."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    local = Path(tempfile.mkdtemp(prefix=f"neo-ckpt-{step}-r{env.rank}-"))
    dcp.save(state, checkpoint_id=str(local))
    if env.rank == 0:
        trainer_state = {"step": step, "cursor": cursor, "world_size": env.world_size}
        (local / TRAINER_STATE).write_text(json.dumps(trainer_state))
    store.publish(local, step, metrics)


def restore_train_state(model: NeoChatModel, opt: torch.optim.Optimizer, url: str) -> dict:
    """Load a DCP checkpoint in place (local path or ``s3://``: each rank reads its items by
    byte range); returns its trainer state."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    fs, root = url_to_fs(url)
    if is_local(fs):
        dcp.load(state, checkpoint_id=root)
    else:
        # torch 2.13 keeps DCP's fsspec reader here (no public re-export)
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        dcp.load(state, storage_reader=FsspecReader(url))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    return json.loads(fs.cat_file(join(root, TRAINER_STATE)))


def export(model: NeoChatModel, config: NeoConfig, url: str, rank: int) -> None:
    """The trained weights in the released NEO layout at ``url`` (collective; rank 0 writes)."""
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        plain = NeoChatModel(config)
        plain.load_state_dict({k: v.float() for k, v in full.items()})
        with tempfile.TemporaryDirectory(prefix="neo-export-") as tmp:
            save_pretrained(plain, tmp)
            write_hf_extras(tmp, config)  # tokenizer, remote code: a complete HF folder
            put_dir(Path(tmp), url)
    dist.barrier()


def put_dir(local: Path, url: str) -> None:
    """Copy a local directory's files to ``url`` (local path or ``s3://``), replacing it."""
    fs, root = url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)
    for f in sorted(local.iterdir()):
        fs.put_file(str(f), join(root, f.name))


def get_dir(url: str) -> Path:
    """A local directory with the files at ``url`` (the directory itself when it is local)."""
    fs, root = url_to_fs(url)
    if is_local(fs):
        return Path(root)
    local = Path(tempfile.mkdtemp(prefix="neo-weights-"))
    if not fs.exists(root):
        raise FileNotFoundError(f"{url}: no such checkpoint directory")
    fs.get(root.rstrip("/") + "/", str(local) + "/", recursive=True)
    return local
