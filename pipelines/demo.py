"""The main job on the embedded default: make the demo set, pack it, print the summary.

    neo demo [--out runs/demo] [--captions N --conversations N --texts N]

Local Ray on 127.0.0.1, local files, the bundled generator's images and conversations.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from neo_data.demo import write_demo_dataset
from neo_data.manifest import load_manifest
from neo_data.pack_job import format_summary, run_pack, verify_counts
from neo_data.ray_env import init_ray

DEMO_MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neo demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo", help="run directory (local path or s3://)")
    ap.add_argument("--manifest", default=str(DEMO_MANIFEST))
    ap.add_argument("--captions", type=int, default=600)
    ap.add_argument("--conversations", type=int, default=300)
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = args.out.rstrip("/")
    manifest = load_manifest(
        args.manifest,
        overrides={
            "data.curated": [f"{out}/curated"],
            "data.packed": f"{out}/packed",
            "pack.seed": args.seed,
        },
    )
    steps: list[tuple[str, float, str]] = []

    t0 = time.perf_counter()
    files = write_demo_dataset(
        f"{out}/curated",
        captions=args.captions,
        conversations=args.conversations,
        texts=args.texts,
        seed=args.seed,
    )
    steps.append(("demo data", time.perf_counter() - t0, f"{len(files)} files in {out}/curated"))

    init_ray()
    t0 = time.perf_counter()
    result = run_pack(manifest)
    verify_counts(result.index)
    note = "already complete" if result.skipped else f"{result.index['totals']['packs']} packs"
    steps.append(("pack", time.perf_counter() - t0, f"{note} in {out}/packed"))

    print()
    print(format_summary(result.index))
    print("\nsteps")
    for name, secs, what in steps:
        print(f"  {name:<12}{secs:>8.1f} s  {what}")
    print(
        f"\nbrowse it:  neo shards stats {out}/packed   |   neo shards show {out}/packed --pack 0"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
