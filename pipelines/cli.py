"""The ``neo`` command: one entry point for every job and browsing tool.

neo demo [--out runs/demo]          the main job on the bundled demo data
neo curate --manifest FILE          URL lists -> curated samples (pipelines/curate.py)
neo recaption --manifest FILE       curated samples -> new captions beside the old (pipelines/recaption.py)
neo pack --manifest FILE            curated samples -> packed shards (pipelines/pack.py)
neo train --manifest FILE           one training stage on Ray Train (pipelines/train.py)
neo manifest validate|schema        check manifests (file:line in every error); JSON Schema for editors
neo manifest show FILE [KEY]        a manifest with `extends` merged (--resolved: every default)
neo manifest set FILE KEY=VALUE...  edit in place, comments kept; refuses an invalid result
neo manifest diff A B               differences of two resolved manifests (exit 1 if any)
neo manifest example [NAME]         print a bundled manifest to start from (no NAME: list them)
neo shards ls|stats|verify|show|serve URL   browse packed datasets (local or s3://), also as a web page
neo chat --checkpoint DIR [Q]       ask a NEO checkpoint, once or in a conversation
neo serve --checkpoint DIR          an OpenAI-compatible endpoint for a NEO checkpoint
neo export CHECKPOINT OUT           any checkpoint as a Hugging Face folder (VLMEvalKit, AutoModel)
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> module whose main(argv) runs it
COMMANDS = {
    "demo": "pipelines.demo",
    "curate": "pipelines.curate",
    "recaption": "pipelines.recaption",
    "pack": "pipelines.pack",
    "train": "pipelines.train",
    "serve": "pipelines.serve",
    "manifest": "pipelines.manifest_cmd",
    "shards": "pipelines.shards_cmd",
    "chat": "pipelines.chat",
    "export": "pipelines.export",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nneo: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
