"""Curation throughput: our job (each download engine) against plain img2dataset, and
filters/dedup per core.

    python benchmarks/bench_curate.py                  # 1,000 samples, about 1-2 minutes
    python benchmarks/bench_curate.py --samples 10000  # the figures of the report

All runs fetch the same generated JPEGs from one loopback HTTP server (the crawl server the
tests use, ``neo_data.synthetic.crawl``, in this process) with the same processes x threads on
the same cores. img2dataset runs as a plain user runs it (multiprocessing distributor, original
bytes kept: ``resize_mode="no"``, ``skip_reencode``, sha256 on): the baseline. Ours is the whole
job on a local Ray already started (as on a cluster): download, full decode, filters,
perceptual hash, cross-run dedup, output and report, once per ``download.engine``: ``neo``
(our urllib fetch) and ``img2dataset`` (its ``download_image`` in our tasks; its time includes
importing img2dataset once in each fresh Ray worker, as a cluster pays it). Printed: a table
with an engine column, rates and ratios against the img2dataset baseline measured in the same
run, and each run's peak worker RSS.

Also, on one core: filters (decode + hash + caption + language) per second, dedup decisions per
second, and memory (peak RSS) of a curation worker and of the single-core filter loop. A tenth
of the samples are exact copies under another URL and a twentieth resized recompressed copies,
so dedup has real work.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from neo_data.synthetic.crawl import CrawlServer, encode, smooth_image  # noqa: E402

WORDS = "a small red boat on a calm lake near green hills under a grey sky at dawn".split()  # noqa: SIM905


def make_corpus(n: int, seed: int = 0) -> tuple[dict[str, tuple[bytes, str]], list[dict]]:
    """``n`` rows over generated JPEGs (~256 px): 85% unique, 10% exact, 5% near copies."""
    import random

    rng = random.Random(seed)
    files: dict[str, tuple[bytes, str]] = {}
    rows = []
    for i in range(n):
        path = f"/b/{i}.jpg"
        r = rng.random()
        if i > 20 and r < 0.10:  # the same bytes as an earlier image, under a new URL
            files[path] = files[f"/b/{rng.randrange(i)}.jpg"]
        elif i > 20 and r < 0.15:  # an earlier picture, resized and recompressed
            src = rng.randrange(i)
            img = smooth_image(src, 256 + src % 64, 192 + src % 48)
            files[path] = (encode(img.resize((200, 150), Image.Resampling.LANCZOS), "JPEG",
                                  quality=70), "image/jpeg")  # fmt: skip
        else:
            img = smooth_image(i, 256 + i % 64, 192 + i % 48)
            files[path] = (encode(img, "JPEG", quality=85), "image/jpeg")
        caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14)))
        rows.append({"path": path, "caption": caption})
    return files, rows


def rss_mib() -> float:
    """Peak RSS of this process (the driver; workers report theirs in the curation report)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_img2dataset(
    url_file: Path, out: Path, processes: int, threads: int, per_shard: int
) -> tuple[float, int]:
    from img2dataset import download

    t0 = time.perf_counter()
    download(
        url_list=str(url_file), input_format="parquet", url_col="url", caption_col="caption",
        output_format="parquet", output_folder=str(out), processes_count=processes,
        thread_count=threads, resize_mode="no", skip_reencode=True, timeout=10, retries=0,
        number_sample_per_shard=per_shard, extract_exif=False, compute_hash="sha256",
        user_agent_token="neo-curate",
        disallowed_header_directives=["noai", "noimageai", "noindex", "noimageindex"],
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    ok = sum(
        pq.read_table(f, columns=["status"]).column("status").to_pylist().count("success")
        for f in out.glob("*.parquet")
    )
    return seconds, ok


def run_ours(
    url_file: Path, out: Path, processes: int, threads: int, rows_per_task: int, engine: str
):
    from neo_data.curate.job import run_curate
    from neo_data.manifest import Manifest

    manifest = Manifest.model_validate(
        {
            "name": "bench",
            "data": {"curated": [str(out / "samples")], "packed": str(out / "packed")},
            "curate": {
                "output": str(out),
                "download": {"processes": processes, "threads": threads,
                             "rows_per_task": rows_per_task, "retries": 0, "engine": engine,
                             "block_private_addresses": False},  # a loopback server
                "filters": {"languages": ["en"], "language_min_chars": 0,
                            "min_language_score": 0.0},
                "sources": [{"name": "bench", "path": str(url_file)}],
            },
        }
    )  # fmt: skip
    t0 = time.perf_counter()
    result = run_curate(manifest)
    return time.perf_counter() - t0, result.report


def filters_per_core(files: dict, rows: list[dict]) -> dict:
    """Decode + size checks + phash + caption + language for every sample, one thread."""
    from neo_data.curate.dedup import DedupItem, find_duplicates
    from neo_data.curate.filters import ImageInfo, check_caption, check_language, inspect_image
    from neo_data.manifest.curate import FilterSpec

    f = FilterSpec(languages=["en"], language_min_chars=0, min_language_score=0.0)
    check_language("warm up the language model", f)
    t0 = time.perf_counter()
    items = []
    for i, r in enumerate(rows):
        data = files[r["path"]][0]
        info = inspect_image(data, f)
        check_caption(r["caption"], f)
        check_language(r["caption"], f)
        assert isinstance(info, ImageInfo)
        items.append(DedupItem(f"s{i}", str(hash(data)), info.phash, f.near_dedup_threshold))
    filter_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dups = find_duplicates(items)
    dedup_s = time.perf_counter() - t0
    return {"filter_per_s": len(rows) / filter_s, "dedup_per_s": len(rows) / dedup_s,
            "dups": len(dups), "rss": rss_mib()}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2, help="both: processes (ours: tasks)")
    ap.add_argument("--threads", type=int, default=32, help="both: threads per process")
    args = ap.parse_args(argv)

    files, rows = make_corpus(args.samples)
    per_core = filters_per_core(files, rows)
    mib = sum(len(v[0]) for v in files.values()) / 2**20
    print(f"{args.samples:,} samples, {mib:.1f} MiB of JPEG; {args.processes} processes x "
          f"{args.threads} threads; {os.cpu_count()} cores")  # fmt: skip

    from neo_data.ray_env import init_ray

    # Fresh workers for each engine (restart_ray_workers): Ray reuses idle workers, and a run
    # would otherwise inherit the previous one's imports and memory.
    init_ray(num_cpus=args.processes)
    with CrawlServer(files=files) as server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        url_file = tmp / "urls.parquet"
        table = pa.Table.from_pylist(
            [{"url": server.url(r["path"]), "caption": r["caption"]} for r in rows]
        )
        pq.write_table(table, url_file)
        # the same work split for both: four units (shards) per process
        rows_per_task = max(50, args.samples // (4 * args.processes))
        i2d_s, i2d_ok = run_img2dataset(
            url_file, tmp / "i2d", args.processes, args.threads, rows_per_task
        )
        ours = {}
        for engine in ("neo", "img2dataset"):
            if ours:
                restart_ray_workers(args.processes)
            ours[engine] = run_ours(url_file, tmp / f"ours-{engine}", args.processes,
                                    args.threads, rows_per_task, engine)  # fmt: skip

    n = args.samples
    print()
    print(f"{'run':<46}{'engine':<13}{'seconds':>9}{'samples/s':>11}{'MiB/s':>8}{'ratio':>8}"
          f"{'worker RSS':>12}")  # fmt: skip
    print(f"{'img2dataset (download, sha256, parquet)':<46}{'(its own)':<13}{i2d_s:>9.2f}"
          f"{n / i2d_s:>11.1f}{mib / i2d_s:>8.2f}{1.0:>8.2f}{'-':>12}")  # fmt: skip
    for engine, (secs, report) in ours.items():
        rss = f"{report['timing']['max_worker_rss_mib']:.0f} MiB"
        print(f"{'neo curate (download, filter, dedup, report)':<46}{engine:<13}{secs:>9.2f}"
              f"{n / secs:>11.1f}{mib / secs:>8.2f}{i2d_s / secs:>8.2f}{rss:>12}")  # fmt: skip
    print("ratio: img2dataset's seconds / this run's seconds (above 1: faster than img2dataset)")
    print()
    print(f"img2dataset downloaded {i2d_ok:,}/{n:,}")
    for engine, (_, report) in ours.items():
        kept, dropped = report["totals"]["kept"], report["by_reason"]
        print(f"neo curate, engine {engine}: kept {kept:,}, dropped {dropped}")
    same = ours["neo"][1]["totals"] == ours["img2dataset"][1]["totals"]
    print(f"both engines give the same totals: {same}")
    print(f"filters on one core (decode, sizes, phash, caption, language): "
          f"{per_core['filter_per_s']:,.0f} samples/s")  # fmt: skip
    print(f"dedup decisions (exact + near, multi-index): {per_core['dedup_per_s']:,.0f} "
          f"samples/s ({per_core['dups']:,} duplicates)")  # fmt: skip
    print(f"peak RSS of the single-core filter loop: {per_core['rss']:.0f} MiB "
          "(incl. the corpus in memory)")  # fmt: skip


def restart_ray_workers(num_cpus: int) -> None:
    """A fresh local Ray: the next run's workers start bare, as on a new cluster."""
    import ray

    from neo_data.ray_env import init_ray

    ray.shutdown()
    init_ray(num_cpus=num_cpus)


if __name__ == "__main__":
    main()
