"""Train one NEO stage on Ray Train from packed shards.

python -m pipelines.train --manifest manifests/pretrain.yaml
ray job submit --working-dir . -- python -m pipelines.train --manifest manifests/pretrain.yaml

Stages chain through their exports: stage 1 starts from a Qwen3 checkpoint (``train.init.kind:
qwen3``), stage 2 from stage 1's ``<output>/export`` (``kind: neo``), stage 3 from stage 2's.
"""

from __future__ import annotations

import sys
import time

from neo_data.console import job_log_file
from neo_data.ray_env import init_ray
from pipelines._job import job_parser, load_job_manifest


def main(argv: list[str] | None = None) -> int:
    ap = job_parser("neo train", __doc__, "train.steps=100")
    args = ap.parse_args(argv)
    manifest = load_job_manifest(args, "train")
    if manifest is None:
        return 2
    from neo_model.train.ray_train import run_stage

    init_ray(log_file=job_log_file(manifest.train.output, "train"))
    t0 = time.perf_counter()
    result = run_stage(manifest)
    m = result.metrics
    print(
        f"\nstage {manifest.stage} ({manifest.name}): {m.get('step', '?')} steps in "
        f"{time.perf_counter() - t0:.0f} s, last loss {m.get('loss', float('nan')):.4f}"
    )
    print(f"checkpoint: {result.checkpoint}")
    print(f"export:     {result.export}   (neo chat --checkpoint {result.export})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
