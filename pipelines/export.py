"""``neo export CHECKPOINT OUT [--manifest FILE]``: a neo checkpoint as a complete Hugging Face
folder (weights, config with ``auto_map``, remote code, tokenizer, generation and processor
configs) that VLMEvalKit, ``transformers`` and ``neo chat`` / ``neo serve`` load.

CHECKPOINT is an export (``<train.output>/export``, released NEO weights) or a training
checkpoint (``<train.output>/checkpoints/step-XXXXXXXX``, which needs the run's ``--manifest``
for the model config and pixel budget); both may be local or ``s3://``. OUT is replaced.
"""

from __future__ import annotations

import argparse
import sys

from neo_data.encoding.tokens import BUILTIN
from neo_data.manifest import ManifestError, load_manifest, parse_overrides


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neo export", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="an export folder or a training checkpoint (step-...)")
    ap.add_argument("out", help="the Hugging Face folder to write (replaced)")
    ap.add_argument("--manifest", help="the run's manifest (for a training checkpoint)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--tokenizer",
        help=f"the tokenizer to ship: default the manifest's pack.tokenizer, else {BUILTIN}",
    )
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    from neo_model.hf_export.convert import ExportError, export_checkpoint

    try:
        manifest = (
            load_manifest(args.manifest, overrides=parse_overrides(args.set))
            if args.manifest
            else None
        )
        tokenizer = args.tokenizer or (manifest.pack.tokenizer if manifest else BUILTIN)
        config = export_checkpoint(args.checkpoint, args.out, manifest, tokenizer)
    except (ManifestError, ExportError, FileNotFoundError, ValueError) as e:
        print(f"neo export: {e}", file=sys.stderr)
        return 2
    print(
        f"exported {args.checkpoint} -> {args.out}: {config.num_layers} layers, hidden "
        f"{config.hidden_size}, pixels {config.min_pixels}..{config.max_pixels}\n"
        f"  neo chat --checkpoint {args.out}\n"
        f"  AutoModel.from_pretrained({args.out!r}, trust_remote_code=True)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
