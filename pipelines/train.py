"""Train one NEO stage on Ray Train from packed shards.

python -m pipelines.train --manifest manifests/pretrain.yaml
ray job submit --working-dir . -- python -m pipelines.train --manifest manifests/pretrain.yaml

Stages chain through their exports: stage 1 starts from a Qwen3 checkpoint (``train.init.kind:
qwen3``), stage 2 from stage 1's ``<output>/export`` (``kind: neo``), stage 3 from stage 2's.
"""

from __future__ import annotations

import argparse
import sys
import time

from neo_data.manifest import ManifestError, load_manifest
from neo_data.ray_env import init_ray
from pipelines.pack import parse_overrides


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neo train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, help="manifest YAML (local path or s3://)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a manifest value, e.g. --set train.steps=100",
    )
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, overrides=parse_overrides(args.set))
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 2
    if manifest.train is None:
        print(f"{args.manifest}: no train: section (see manifests/pretrain.yaml)", file=sys.stderr)
        return 2
    from neo_model.ray_train import run_stage

    init_ray()
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
