"""``neo shards stats|verify|show URL``: look into a packed dataset on a local path or s3://."""

from __future__ import annotations

import argparse
import sys

from neo_data.pack_job import format_summary
from neo_data.shards import PackedDataset
from neo_data.tokens import load_tokenizer


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="neo shards")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, text in (
        ("stats", "buckets, tokens, fill, text ratio, drop reasons"),
        ("verify", "check every shard against the index checksums"),
    ):
        sub.add_parser(name, help=text).add_argument("url")
    show = sub.add_parser("show", help="one pack: its samples and their tokens with T/H/W")
    show.add_argument("url")
    show.add_argument("--shard", type=int, default=0)
    show.add_argument("--pack", type=int, default=0)
    show.add_argument("--sample", type=int, default=None, help="only this sample of the pack")
    args = ap.parse_args(argv)

    ds = PackedDataset(args.url)
    if args.cmd == "stats":
        print(format_summary(ds.index))
        return 0
    if args.cmd == "verify":
        problems = ds.verify()
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(ds.shards)} shards checked, {len(problems)} problem(s)")
        return 1 if problems else 0
    print(
        format_pack(ds.read_pack(args.shard, args.pack), ds.index["tokenizer"]["spec"], args.sample)
    )
    return 0


def format_pack(pack: dict, tokenizer: str, only_sample: int | None = None) -> str:
    tok = load_tokenizer(tokenizer)
    cu = pack["cu_seqlens"]
    lines = [
        f"pack {pack['pack_id']} ({pack['bucket']}): {pack['num_tokens']} tokens, "
        f"{len(cu) - 1} samples, {len(pack['images'])} images"
    ]
    for k in range(len(cu) - 1):
        if only_sample is not None and k != only_sample:
            continue
        lines.append(f"\nsample {k}: {pack['sample_ids'][k]} from {pack['sample_sources'][k]}")
        lines.append(f"  {'pos':>6} {'T':>5} {'H':>3} {'W':>3} {'img':>3}  {'label':>7}  token")
        prev_img = None
        for i in range(cu[k], cu[k + 1]):
            o = pack["image_ordinal"][i]
            if (
                o >= 0
                and o == prev_img
                and pack["h_index"][i] + pack["w_index"][i] > 0
                and i + 1 < cu[k + 1]
                and pack["image_ordinal"][i + 1] == o
            ):
                continue  # print the first and the last token of each image
            prev_img = o
            label = pack["labels"][i]
            lines.append(
                f"  {i:>6} {pack['t_index'][i]:>5} {pack['h_index'][i]:>3} {pack['w_index'][i]:>3} "
                f"{o if o >= 0 else '':>3}  {label if label >= 0 else '':>7}  {tok.id_to_token(pack['input_ids'][i])!r}"
            )
    return "\n".join(lines)
