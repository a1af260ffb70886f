"""Pack curated samples into resolution-bucketed NEO shards.

python -m pipelines.pack --manifest manifests/demo.yaml
ray job submit --working-dir . -- python -m pipelines.pack --manifest manifests/pretrain.yaml
"""

from __future__ import annotations

import sys

from neo_data.console import job_log_file
from neo_data.pack.job import run_pack
from neo_data.pack.report import format_report
from neo_data.ray_env import init_ray
from pipelines._job import JOB_ERRORS, job_parser, load_job_manifest


def main(argv: list[str] | None = None) -> int:
    ap = job_parser("neo pack", __doc__, "data.packed=s3://bucket/packed")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="windows packed at once (default: one per CPU)",
    )
    args = ap.parse_args(argv)
    manifest = load_job_manifest(args)
    if manifest is None:
        return 2
    init_ray(log_file=job_log_file(manifest.data.packed, "pack"))
    try:
        result = run_pack(manifest, concurrency=args.concurrency)
    except JOB_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.skipped:
        print(f"{result.output} is already complete (same manifest); nothing to do.")
    print(format_report(result.index))
    print(f"\nwrote {result.output}/index.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
