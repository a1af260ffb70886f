"""``neo shards ls|stats|verify|show|serve|convert URL``: look into packed datasets (local or
s3://), or copy one into the other shard format.

    neo shards ls URL [--json] [--depth N]     datasets at or below URL; a dataset's shards
    neo shards stats URL [--json]              buckets, tokens, fill, text ratio, sources, drops
    neo shards verify URL                      every shard against the index's size and sha256,
                                               then every sample id recounted (none twice)
    neo shards show URL [--shard I] --pack N [--sample K] [--save-images DIR]
                                               one pack: sample text, tokens with T/H/W, images
    neo shards serve URL [--host H] [--port P] [--open]
                                               the same as a local read-only web page
    neo shards convert URL DEST --format arrow|parquet [--arrow-compression zstd|lz4|none]
                                               the same packs in the other format (e.g. a
                                               Parquet set on s3:// as Arrow IPC on local disk)

``s3://`` URLs use the usual AWS environment and config files (``AWS_ENDPOINT_URL`` for MinIO or
another S3-compatible store). The logic lives in :mod:`neo_data.browser`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import webbrowser

import pyarrow as pa
import pyarrow.compute as pc

from neo_data.browser.views import (
    dataset_row,
    find_datasets,
    format_sources,
    format_table,
    image_mime,
    read_rejected,
    sample_images,
    sample_turns,
    shard_rows,
    source_counts,
    token_rows,
)
from neo_data.encoding.tokens import NeoTokenizer, load_tokenizer
from neo_data.format.ipc import ARROW_COMPRESSIONS
from neo_data.format.schema import SHARD_FORMATS
from neo_data.format.shards import PackedDataset, convert_dataset
from neo_data.format.storage import join, url_to_fs
from neo_data.pack.report import format_report, recount

DATASET_COLUMNS = ["dataset", "name", "stage", "packs", "samples", "tokens", "bytes", "shards"]
SHARD_COLUMNS = ["shard", "path", "bucket", "bytes", "packs", "samples", "tokens", "images"]


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except (FileNotFoundError, FileExistsError, IndexError, ValueError) as e:  # URL, pack, schema
        print(f"neo shards {args.cmd}: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="neo shards", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="datasets (name, stage, packs, samples, tokens, bytes, shards)")
    ls.add_argument("url", help="a dataset root, or a prefix holding datasets")
    ls.add_argument("--depth", type=int, default=3, help="directories to search below URL")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    stats = sub.add_parser("stats", help="buckets, tokens, fill, text ratio, sources, drops")
    stats.add_argument("url")
    stats.add_argument("--json", action="store_true", help="the index totals, buckets, sources")
    sub.add_parser("verify", help="check every shard against the index checksums").add_argument(
        "url"
    )
    show = sub.add_parser("show", help="one pack: sample text, tokens with T/H/W, images")
    show.add_argument("url")
    show.add_argument("--shard", type=int, default=0, help="shard number (see `ls`)")
    show.add_argument(
        "--pack",
        default="0",
        help="pack number in --shard, or a pack id (e.g. low-00000-0000-0003)",
    )
    show.add_argument("--sample", type=int, default=None, help="only this sample of the pack")
    show.add_argument("--save-images", metavar="DIR", help="write the pack's images to DIR")
    show.add_argument("--no-tokens", action="store_true", help="sample text only, no token table")
    serve = sub.add_parser("serve", help="a local read-only web page with the same views")
    serve.add_argument("url")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--depth", type=int, default=3, help="directories to search below URL")
    serve.add_argument("--open", action="store_true", help="open the page in a web browser")
    convert = sub.add_parser("convert", help="copy a dataset with its shards in another format")
    convert.add_argument("url", help="the packed dataset to copy")
    convert.add_argument("dest", help="where the copy goes (must not hold a dataset yet)")
    convert.add_argument("--format", required=True, choices=SHARD_FORMATS)
    convert.add_argument(
        "--arrow-compression", choices=ARROW_COMPRESSIONS, help="IPC buffers (default zstd)"
    )
    return ap


# ---------------------------------------------------------------------------------------------
# ls
# ---------------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    entries = find_datasets(args.url, args.depth)
    if not entries:
        print(
            f"neo shards ls: no packed dataset (index.json) at most {args.depth} levels below "
            f"{args.url}",
            file=sys.stderr,
        )
        return 1
    rows = [dataset_row(e) for e in entries]
    single = len(entries) == 1 and entries[0].index is not None
    if single:
        rows[0]["shard_list"] = shard_rows(entries[0].index)
    if args.json:
        print(json.dumps(rows if not single else rows[0], indent=1))
        return 0
    print(format_table(rows, DATASET_COLUMNS))
    for r in rows:
        if r.get("problem"):
            print(f"  {r['dataset']}: {r['problem']}")
    if single:
        print(f"\n{len(rows[0]['shard_list'])} shards of {entries[0].url}")
        print(format_table(rows[0]["shard_list"], SHARD_COLUMNS))
    return 0


# ---------------------------------------------------------------------------------------------
# stats / verify
# ---------------------------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace) -> int:
    ds = PackedDataset(args.url)
    rejected = read_rejected(ds)
    sources = source_counts(ds, rejected)
    if args.json:
        out = {
            "totals": ds.index["totals"],
            "buckets": ds.index["buckets"],
            "sources": {
                s: {"packed": c.packed, "text_only": c.text_only, "dropped": dict(c.dropped)}
                for s, c in sources.items()
            },
        }
        print(json.dumps(out, indent=1))
        return 0
    print(format_report(ds.index))
    print("\nsources (rows in = packed + dropped)")
    print("  " + format_sources(sources).replace("\n", "\n  "))
    dropped = ds.index["totals"]["dropped"]
    in_files = sum(c.total - c.packed for c in sources.values())
    if in_files != sum(dropped.values()):
        print(
            f"\nwarning: rejected/ holds {in_files} rows but the index counts "
            f"{sum(dropped.values())} dropped",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ds = PackedDataset(args.url)
    problems = ds.verify()
    if not problems:  # the files are the index's: recount their sample ids
        packed = pa.chunked_array(
            [pc.list_flatten(ds.read_shard(i, ["sample_ids"])["sample_ids"]) for i in
             range(len(ds.shards))],
            type=pa.string(),
        )  # fmt: skip
        rejected = read_rejected(ds)["sample_id"]
        totals = ds.index.get("totals")
        if totals is None:  # no counts to hold them to: duplicates only
            problems = recount(packed, rejected, len(packed) + len(rejected))
        else:
            problems = recount(packed, rejected, totals["samples_in"])
            if len(rejected) != sum(totals["dropped"].values()):
                problems.append(
                    f"rejected/ holds {len(rejected)} rows but the index counts "
                    f"{sum(totals['dropped'].values())} dropped"
                )
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(ds.shards)} shards checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_convert(args: argparse.Namespace) -> int:
    if args.arrow_compression and args.format != "arrow":
        raise ValueError("--arrow-compression applies to --format arrow")
    src = PackedDataset(args.url)
    index = convert_dataset(src, args.dest, args.format, args.arrow_compression)
    print(
        f"{len(index['shards'])} shards written to {args.dest} as {args.format}: "
        f"{sum(s['bytes'] for s in index['shards']):,} bytes "
        f"(the source: {sum(s['bytes'] for s in src.shards):,})"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    ds = PackedDataset(args.url)
    shard, pack_no = resolve_pack(ds, args.shard, args.pack)
    pack = ds.read_pack(shard, pack_no)
    n_samples = len(pack["cu_seqlens"]) - 1
    if args.sample is not None and not 0 <= args.sample < n_samples:
        raise IndexError(f"pack {pack['pack_id']}: no sample {args.sample} (it has {n_samples})")
    tok = load_tokenizer(ds.index["tokenizer"]["spec"])
    print(format_pack(pack, tok, args.sample, tokens=not args.no_tokens))
    if args.save_images:
        for path in save_images(pack, args.save_images, args.sample):
            print(f"wrote {path}")
    elif pack["images"]:
        print(
            f"\n{len(pack['images'])} images: --save-images DIR writes them, "
            f"`neo shards serve {args.url}` shows them"
        )
    return 0


def resolve_pack(ds: PackedDataset, shard: int, pack: str) -> tuple[int, int]:
    """``(shard, pack in shard)`` from a pack number in ``shard`` or a pack id
    (``<bucket>-<window>-<shard>-<pack>``, as ``pack_id`` and ``stats`` print it)."""
    if pack.isdigit():
        if not 0 <= shard < len(ds.shards):
            raise IndexError(f"{ds.url}: no shard {shard} (it has {len(ds.shards)})")
        return shard, int(pack)
    bucket, window, in_window, number = (pack.rsplit("-", 3) + ["", "", ""])[:4]
    want = f"shards/{bucket}/shard-{window}-{in_window}"  # .parquet or .arrow
    for i, s in enumerate(ds.shards):
        if s["path"].rsplit(".", 1)[0] == want and number.isdigit():
            return i, int(number)
    raise ValueError(f"{ds.url}: no pack id {pack!r} (expected <bucket>-<window>-<shard>-<pack>)")


def format_pack(
    pack: dict, tok: NeoTokenizer, only_sample: int | None = None, tokens: bool = True
) -> str:
    """A pack as text: per sample its id, source, images and turns, then its tokens with T/H/W
    (image tokens shown by their first and last)."""
    cu = pack["cu_seqlens"]
    lines = [
        f"pack {pack['pack_id']} ({pack['bucket']}): {pack['num_tokens']} tokens, "
        f"{len(cu) - 1} samples, {len(pack['images'])} images"
    ]
    for k in range(len(cu) - 1):
        if only_sample is not None and k != only_sample:
            continue
        kind = "text-only" if pack["sample_text_only"][k] else "multimodal"
        lines.append(
            f"\nsample {k}: {pack['sample_ids'][k]} from {pack['sample_sources'][k]} "
            f"({kind}, {cu[k + 1] - cu[k]} tokens)"
        )
        for o in sample_images(pack, k):
            h, w = pack["image_heights"][o], pack["image_widths"][o]
            lines.append(f"  image {o}: {w}x{h} px, {h // 32}x{w // 32} tokens (HxW)")
        for turn in sample_turns(pack, k, tok):
            text = turn.content.replace("\n", "\n" + " " * 13)
            lines.append(f"  {turn.role + ':':<10} {text}")
        if tokens:
            lines.append(
                f"\n  {'pos':>6} {'T':>5} {'H':>3} {'W':>3} {'img':>3}  {'label':>7}  token"
            )
            for r in token_rows(pack, tok, sample=k):
                more = f"  ... {r['skipped']} more image tokens" if r["skipped"] else ""
                lines.append(
                    f"  {r['pos']:>6} {r['t']:>5} {r['h']:>3} {r['w']:>3} "
                    f"{'' if r['image'] is None else r['image']:>3}  "
                    f"{'' if r['label'] is None else r['label']:>7}  {r['token']!r}{more}"
                )
    return "\n".join(lines)


def save_images(pack: dict, out: str, only_sample: int | None = None) -> list[str]:
    """Write the pack's images (or one sample's) to ``out`` (any fsspec URL) as
    ``<pack_id>-img<k>.<ext>``, byte for byte as stored; return the paths written. The id comes
    from the shard (data, maybe hostile): :func:`file_stem` keeps the files inside ``out``."""
    fs, root = url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    ordinals = (
        range(len(pack["images"])) if only_sample is None else sample_images(pack, only_sample)
    )
    written = []
    for o in ordinals:
        data = pack["images"][o]
        _, ext = image_mime(data)
        path = join(root, f"{file_stem(pack['pack_id'])}-img{o:03d}.{ext}")
        with fs.open(path, "wb") as f:
            f.write(data)
        written.append(path)
    return written


def file_stem(pack_id: str) -> str:
    """``pack_id`` as one file name: characters other than letters, digits, ``.``, ``_`` and
    ``-`` become ``_`` and leading dots are dropped, so ``../`` or ``/`` cannot leave the folder."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", pack_id).lstrip(".") or "pack"


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from neo_data.browser.server import BackgroundServer
    from neo_data.hostcheck import is_loopback

    server = BackgroundServer(args.url, args.host, args.port, args.depth)
    if not is_loopback(args.host):
        print(
            f"warning: serving on {args.host}: anyone who can reach it reads these datasets "
            "(there is no login)",
            file=sys.stderr,
        )
    with server:
        print(f"neo shards: serving {args.url} at {server.base_url}/  (Ctrl-C to stop)", flush=True)
        if args.open:
            webbrowser.open(server.base_url + "/")
        try:
            server.wait()
        except KeyboardInterrupt:
            print("stopped")
    return 0


COMMANDS = {
    "ls": cmd_ls,
    "stats": cmd_stats,
    "verify": cmd_verify,
    "show": cmd_show,
    "serve": cmd_serve,
    "convert": cmd_convert,
}
