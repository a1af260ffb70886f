"""One training stage without Ray: ``neo train``'s per-worker loop as a process of its own, or
as every rank of ``torchrun``.

python -m pipelines.train_worker --manifest manifests/pretrain.yaml [--set KEY=VALUE]
torchrun --nproc-per-node=8 -m pipelines.train_worker --manifest manifests/pretrain.yaml

The loop is the one Ray Train runs on its workers (``neo_model.train.loop.train_worker``); here
it creates the process group itself (torchrun's, or a one-rank gloo group) and uploads its
checkpoints to ``<train.output>/checkpoints`` with fsspec; running it again resumes.
"""

from __future__ import annotations

import sys

from pipelines._job import job_parser, load_job_manifest


def main(argv: list[str] | None = None) -> int:
    ap = job_parser("python -m pipelines.train_worker", __doc__, "train.steps=100")
    args = ap.parse_args(argv)
    manifest = load_job_manifest(args, "train")
    if manifest is None:
        return 2
    import torch.distributed as dist

    from neo_model.train.loop import train_worker

    train_worker({"manifest": manifest.model_dump(mode="json")})
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
