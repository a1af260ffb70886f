"""One NEO training stage on Ray Train: ``TorchTrainer`` (Ray Train V2) around the per-worker
loop of ``neo_model.train.loop``.

Storage: the run lives in ``train.output`` (local path or ``s3://``): Ray's checkpoints under
``<output>/checkpoints/step-XXXXXXXX/`` (sharded DCP files of every worker plus
``trainer_state.json``; the newest ``keep_checkpoints`` kept), the final export in the released
NEO layout under ``<output>/export/``. A failed worker group is restarted up to ``max_failures``
times from the latest checkpoint; running the same manifest again resumes the same way (and does
nothing more once the last step is checkpointed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from neo_data.format.storage import join
from neo_data.manifest import Manifest
from neo_model.train.checkpoint import CHECKPOINT_DIR, EXPORT_DIR
from neo_model.train.loop import train_worker


@dataclass(frozen=True)
class StageResult:
    export: str  # URL of the exported checkpoint (released NEO layout)
    metrics: dict
    checkpoint: str | None  # the latest checkpoint's path in storage


def storage(output: str) -> tuple[str, object | None]:
    """``RunConfig`` storage for ``output``: local paths as they are; ``s3://bucket/prefix``
    as ``bucket/prefix`` with a pyarrow S3 filesystem that honours ``AWS_ENDPOINT_URL``
    (S3-compatible stores such as MinIO, or moto in tests)."""
    if output.startswith("s3://"):
        import pyarrow.fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {}
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs = {"endpoint_override": parsed.netloc, "scheme": parsed.scheme or "https"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return output[len("s3://") :].rstrip("/"), pyarrow.fs.S3FileSystem(**kwargs)
    if "://" in output:
        raise ValueError(f"train.output {output!r}: expected a local path or s3://")
    return os.path.abspath(output), None


def _absolute(url: str | None) -> str | None:
    return url if url is None or "://" in url else os.path.abspath(url)


def _absolute_data(data):
    if isinstance(data, list):
        return [e.model_copy(update={"path": _absolute(e.path)}) for e in data]
    return _absolute(data)


def absolute_paths(manifest: Manifest) -> Manifest:
    """Local paths made absolute on the driver: Ray workers do not share its working directory."""
    spec = manifest.train
    init = spec.init.model_copy(update={"path": _absolute(spec.init.path)})
    train = spec.model_copy(
        update={"init": init, "output": _absolute(spec.output), "data": _absolute_data(spec.data)}
    )
    data = manifest.data.model_copy(update={"packed": _absolute(manifest.data.packed)})
    return manifest.model_copy(update={"train": train, "data": data})


# Environment forwarded to the workers through Ray's runtime env, which Ray logs at INFO and
# shows in its state API and dashboard: settings only, never a secret. AWS: where and which
# profile, not who (no access key, secret key or session token -- workers use their own
# credential chain: instance profile, IRSA, their node's config files). NEO_* settings are
# forwarded unless a part of the name says secret.
FORWARDED_AWS = (
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
)
FORWARDED = ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")
SECRET_PARTS = {"KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIALS", "AUTH"}


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` the training workers get (see :data:`FORWARDED_AWS`)."""
    return {
        k: v
        for k, v in environ.items()
        if k in FORWARDED_AWS
        or k in FORWARDED
        or (k.startswith("NEO_") and not SECRET_PARTS & set(k.split("_")))
    }


def run_stage(manifest: Manifest) -> StageResult:
    """Run ``manifest``'s training stage on the Ray cluster this process is connected to."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = manifest.train
    if spec is None:
        raise ValueError(f"manifest {manifest.name!r} has no train: section")
    manifest = absolute_paths(manifest)
    spec = manifest.train
    path, filesystem = storage(spec.output)
    env_vars = worker_env(os.environ)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"manifest": manifest.model_dump(mode="json")},
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers,
            use_gpu=spec.use_gpu,
            resources_per_worker={"CPU": spec.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=CHECKPOINT_DIR,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            worker_runtime_env={"env_vars": env_vars},
        ),
    )
    result = trainer.fit()
    return StageResult(
        export=join(spec.output, EXPORT_DIR),
        metrics=dict(result.metrics or {}),
        checkpoint=result.checkpoint.path if result.checkpoint else None,
    )
