"""Recaption curated samples with a captioning model (the manifest's ``recaption:`` section).

python -m pipelines.recaption --manifest manifests/recaption_example.yaml
ray job submit --working-dir . -- python -m pipelines.recaption --manifest FILE
"""

from __future__ import annotations

import logging
import sys

from neo_data.console import job_log_file
from neo_data.manifest.recaption import check_policy
from neo_data.ray_env import init_ray
from neo_data.recaption.captioners import CaptionerUnavailable
from neo_data.recaption.job import run_recaption
from neo_data.recaption.report import format_report
from pipelines._job import JOB_ERRORS, job_parser, load_job_manifest


def main(argv: list[str] | None = None) -> int:
    ap = job_parser("neo recaption", __doc__, "recaption.batch_size=32")
    args = ap.parse_args(argv)
    manifest = load_job_manifest(args, "recaption")
    if manifest is None:
        return 2
    try:
        check_policy(manifest.recaption, manifest.pack.caption_choice)
    except ValueError as e:
        print(f"{args.manifest}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    init_ray(log_file=job_log_file(manifest.recaption.output, "recaption"))
    try:
        result = run_recaption(manifest)
    except (*JOB_ERRORS, CaptionerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.files_skipped:
        print(f"{result.files_skipped} input file(s) were already done (resumed).")
    print(format_report(result.report))
    print(f"\nwrote {result.output}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
