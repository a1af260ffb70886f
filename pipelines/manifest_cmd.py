"""``neo manifest validate FILE...``: validate manifests; ``schema`` prints the JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys

from neo_data.manifest import Manifest, ManifestError, load_manifest


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="neo manifest")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate manifests")
    v.add_argument("files", nargs="+")
    sub.add_parser("schema", help="print the JSON Schema of a manifest (for editors)")
    args = ap.parse_args(argv)
    if args.cmd == "schema":
        print(json.dumps(Manifest.model_json_schema(), indent=2))
        return 0
    bad = 0
    for f in args.files:
        try:
            m = load_manifest(f)
        except ManifestError as e:
            print(e, file=sys.stderr)
            bad += 1
            continue
        print(f"{f}: ok ({m.name}, stage {m.stage}, sha256 {m.content_hash()[:12]})")
    return 1 if bad else 0
