"""Curate raw sources (url + caption, conversations, text) into neo.curated samples on Ray.

python -m pipelines.curate --manifest manifests/curate_example.yaml
ray job submit --working-dir . -- python -m pipelines.curate --manifest manifests/pretrain.yaml
"""

from __future__ import annotations

import sys

from neo_data.console import job_log_file
from neo_data.curate.job import run_curate
from neo_data.curate.plan import CurateError
from neo_data.curate.report import format_report
from neo_data.ray_env import init_ray
from pipelines._job import JOB_ERRORS, job_parser, load_job_manifest


def main(argv: list[str] | None = None) -> int:
    ap = job_parser("neo curate", __doc__, "curate.output=s3://bucket/curated")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="units curated at once (default: curate.download.processes, else one per CPU)",
    )
    args = ap.parse_args(argv)
    manifest = load_job_manifest(args, "curate")
    if manifest is None:
        return 2
    init_ray(log_file=job_log_file(manifest.curate.output, "curate"))
    try:
        result = run_curate(manifest, concurrency=args.concurrency)
    except (CurateError, *JOB_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.skipped:
        print(f"{result.output} is already complete (same curate section); nothing to do.")
    print(format_report(result.report))
    print(f"\nwrote {result.output}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
