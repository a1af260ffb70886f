"""What every job entrypoint shares: ``--manifest FILE`` and ``--set KEY=VALUE`` options, and
loading the manifest with errors a user can act on (printed, exit status 2)."""

from __future__ import annotations

import argparse
import sys

from neo_data.format.schema import SchemaMismatch
from neo_data.format.storage import OutputConflict
from neo_data.manifest import Manifest, ManifestError, load_manifest, parse_overrides

# What a data job raises for a user to act on (printed as `error: ...`, exit status 2): its
# output holds other work, an input is missing, an input has another schema.
JOB_ERRORS = (OutputConflict, FileNotFoundError, SchemaMismatch)


def job_parser(prog: str, doc: str, set_example: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, help="manifest YAML (local path or s3://)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a manifest value, e.g. --set {set_example}",
    )
    return ap


def load_job_manifest(args: argparse.Namespace, section: str | None = None) -> Manifest | None:
    """The manifest of ``args``, or None (the problems printed: the job exits with status 2)
    when it is not valid or lacks the job's ``section``."""
    try:
        manifest = load_manifest(args.manifest, overrides=parse_overrides(args.set))
    except (ManifestError, ValueError) as e:
        print(e, file=sys.stderr)
        return None
    if section is not None and getattr(manifest, section) is None:
        print(
            f"error: {args.manifest}: no `{section}:` section (see manifests/pretrain.yaml)",
            file=sys.stderr,
        )
        return None
    return manifest
