"""Pack curated samples into resolution-bucketed NEO shards.

python -m pipelines.pack --manifest manifests/demo.yaml
ray job submit --working-dir . -- python -m pipelines.pack --manifest manifests/pretrain.yaml
"""

from __future__ import annotations

import argparse
import sys

from neo_data.manifest import ManifestError, load_manifest
from neo_data.pack_job import OutputConflict, format_summary, run_pack, verify_counts
from neo_data.ray_env import init_ray


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neo pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, help="manifest YAML (local path or s3://)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a manifest value, e.g. --set data.packed=s3://bucket/packed",
    )
    ap.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="windows packed at once (default: one per CPU)",
    )
    ap.add_argument(
        "--keep-work",
        action="store_true",
        help="keep _work/ (intermediate encodings) after success",
    )
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, overrides=parse_overrides(args.set))
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 2
    init_ray()
    try:
        result = run_pack(manifest, concurrency=args.concurrency)
    except OutputConflict as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verify_counts(result.index)
    if result.skipped:
        print(f"{result.output} is already complete (same manifest); nothing to do.")
    print(format_summary(result.index))
    print(f"\nwrote {result.output}/index.json")
    return 0


def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


if __name__ == "__main__":
    sys.exit(main())
