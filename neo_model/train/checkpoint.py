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
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from neo_data.format.storage import join, url_to_fs

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"


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
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return Path(root)
    local = Path(tempfile.mkdtemp(prefix="neo-weights-"))
    if not fs.exists(root):
        raise FileNotFoundError(f"{url}: no such checkpoint directory")
    fs.get(root.rstrip("/") + "/", str(local) + "/", recursive=True)
    return local
