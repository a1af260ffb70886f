"""Curate raw sources (url + caption, conversations, text) into neo.curated samples on Ray.

python -m pipelines.curate --manifest manifests/curate_example.yaml
ray job submit --working-dir . -- python -m pipelines.curate --manifest manifests/pretrain.yaml
"""

from __future__ import annotations

import argparse
import sys

from neo_data.curate import CurateError, format_report, run_curate
from neo_data.manifest import ManifestError, load_manifest
from neo_data.ray_env import init_ray
from pipelines.pack import parse_overrides


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neo curate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, help="manifest YAML (local path or s3://)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a manifest value, e.g. --set curate.output=s3://bucket/curated",
    )
    ap.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="units curated at once (default: curate.download.processes, else one per CPU)",
    )
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, overrides=parse_overrides(args.set))
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 2
    if manifest.curate is None:
        print(f"error: {args.manifest}: no `curate:` section; nothing to curate", file=sys.stderr)
        return 2
    init_ray()
    try:
        result = run_curate(manifest, concurrency=args.concurrency)
    except (CurateError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.skipped:
        print(f"{result.output} is already complete (same curate section); nothing to do.")
    print(format_report(result.report))
    print(f"\nwrote {result.output}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
