"""neo manifest: check, show, edit and compare manifests.

neo manifest validate FILE...            check manifests (file:line: path: value -- what is allowed)
neo manifest show FILE [KEY] [--resolved] the manifest with ``extends`` merged, as YAML; --resolved
                                         fills in every default; KEY shows one section or value
neo manifest set FILE KEY=VALUE...       edit values in place (comments kept); refuses to write
                                         a manifest that does not validate
neo manifest diff A B                    differences of the resolved manifests; exit 1 if any
neo manifest schema                      the JSON Schema, for editors that validate while typing
neo manifest example [NAME]              print a bundled manifest (> my.yaml; one that extends
                                         another comes merged, --as-written as it is); no NAME:
                                         list them
"""

from __future__ import annotations

import argparse
import json
import sys

from neo_data.manifest import (
    MISSING,
    ManifestError,
    diff_manifests,
    edit_manifest,
    example_names,
    example_purpose,
    example_text,
    format_key_path,
    get_path,
    load_manifest,
    manifest_json_schema,
    manifest_yaml,
    parse_key_path,
    resolve_manifest,
)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="neo manifest",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n\n")[1].splitlines()),
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate manifests")
    v.add_argument("files", nargs="+")
    v.set_defaults(run=_validate)
    s = sub.add_parser("show", help="print a manifest with `extends` merged, as YAML")
    s.add_argument("file")
    s.add_argument("key", nargs="?", help="only this section or value, e.g. pack or pack.seq_len")
    s.add_argument(
        "--resolved", action="store_true", help="every value, defaults and stage defaults filled"
    )
    s.set_defaults(run=_show)
    e = sub.add_parser("set", help="edit values in place, keeping comments and layout")
    e.add_argument("file")
    e.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    e.set_defaults(run=_set)
    d = sub.add_parser("diff", help="differences of two resolved manifests (exit 1 if any)")
    d.add_argument("a")
    d.add_argument("b")
    d.set_defaults(run=_diff)
    sc = sub.add_parser("schema", help="print the JSON Schema of a manifest (for editors)")
    sc.set_defaults(run=_schema)
    x = sub.add_parser("example", help="print a bundled manifest, or list them")
    x.add_argument("name", nargs="?", help="e.g. pretrain (no name: list them)")
    x.add_argument(
        "--as-written", action="store_true", help="the file as it is (`extends` and comments kept)"
    )
    x.set_defaults(run=_example)
    return ap


def _validate(args: argparse.Namespace) -> int:
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


def _show(args: argparse.Namespace) -> int:
    resolved = resolve_manifest(args.file)
    manifest = resolved.validate()  # show only what a job would accept
    data = manifest.resolved() if args.resolved else resolved.data
    header = [f"# {args.file}" + "".join(f" extends {f}" for f in resolved.files[1:])]
    header.append(f"# sha256 {manifest.content_hash()}")
    if args.key:
        keys = parse_key_path(args.key)
        try:
            value = get_path(data, keys)
        except KeyError as e:
            kind = "resolved manifest" if args.resolved else "manifest (try --resolved)"
            print(f"{args.file}: no {e.args[0]} in the {kind}", file=sys.stderr)
            return 2
        data = {format_key_path(keys): value}
    print("\n".join(header))
    print(manifest_yaml(data), end="")
    return 0


def _set(args: argparse.Namespace) -> int:
    try:
        m = edit_manifest(args.file, args.assignments)
    except ManifestError as e:
        print(f"{e}\n{args.file}: not changed", file=sys.stderr)
        return 2
    print(f"{args.file}: set {len(args.assignments)} value(s); ok ({m.name}, stage {m.stage})")
    return 0


def _diff(args: argparse.Namespace) -> int:
    changes = diff_manifests(load_manifest(args.a), load_manifest(args.b))
    if not changes:
        return 0
    print(f"--- {args.a}\n+++ {args.b}")
    for path, old, new in changes:
        if old is not MISSING:
            print(f"- {path}: {json.dumps(old)}")
        if new is not MISSING:
            print(f"+ {path}: {json.dumps(new)}")
    return 1


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(manifest_json_schema(), indent=2))
    return 0


def _example(args: argparse.Namespace) -> int:
    if args.name is not None:
        print(example_text(args.name, as_written=args.as_written), end="")
        return 0
    names = example_names()
    width = max(map(len, names))
    print("Bundled manifests (`neo manifest example NAME > my.yaml`):")
    for name in names:
        print(f"  {name:<{width}}  {example_purpose(name, 96 - width)}")
    return 0
