"""Cost tables of the data jobs at growing sizes, and their projection to the paper's 345M rows.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--workers 2]
        [--stages curate,dedup,pack] [--max-curate 100000] [--max-pack 100000] [--nodes 16]

For every stage and size (each size in a fresh process, so the driver's peak is its own):

* ``curate``: N caption rows of small distinct JPEGs (every 10th a copy of an earlier one,
  every 10th a re-encoded near copy) behind a loopback HTTP server (``python -m http.server`` in
  its own process, its CPU and memory not counted: it is the web), through ``run_curate``
  (download, filter, hash, dedup, finalize, report); the inputs are made by a child process;
* ``dedup``: the dedup stage alone (``neo_data.curate.dedup_stage``) on precomputed keys (10%
  exact copies, 10% near copies a few bits away): downloading a million images is not its point;
* ``pack``: N curated rows of small JPEGs through ``run_pack``.

Columns: wall seconds of the job (Ray already started), CPU-seconds per 1,000 rows (the driver,
Ray's own processes and every worker, sampled), peak RSS of the driver and of the largest worker
(sampled every 0.2 s from /proc: Linux), per-row cost against the smallest size, and the wall hours 345M rows would
take on ``--nodes`` machines like this one (CPU-seconds spread over their cores). Run on a shared
machine the figures carry its contention: compare the ratios, taken in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PAPER_ROWS = 345_000_000
ROWS_PER_UNIT = 2_000
WORDS = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "old",
    "new",
    "wooden",
    "stone",
    "glass",
    "river",
    "hill",
    "road",
    "tree",
    "sky",
]


TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc(pid: int) -> tuple[int, float, int, str] | None:
    """(parent, CPU seconds, RSS bytes, command) of a process, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except (OSError, IndexError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, rss, cmd


class Sampler:
    """Peak RSS of this process and of its Ray workers, and the CPU time of all descendants."""

    def __init__(self, every: float = 0.2, exclude: tuple[int, ...] = ()):
        self.me = os.getpid()
        self.exclude = set(exclude)  # processes that are not the job's (the loopback web)
        self.every = every
        self.driver_peak = self.worker_peak = 0
        self.cpu: dict[int, float] = {}
        self.base = {pid: info[1] for pid, info in self._tree().items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> dict[int, tuple[int, float, int, str]]:
        procs = {}
        for d in os.listdir("/proc"):
            if d.isdigit() and (info := _proc(int(d))) is not None:
                procs[int(d)] = info
        keep, frontier = {}, {self.me}
        while frontier:
            keep.update({p: procs[p] for p in frontier if p in procs})
            frontier = {
                p
                for p, info in procs.items()
                if info[0] in frontier and p not in keep and p not in self.exclude
            }
        return keep

    def _tick(self) -> None:
        for pid, (_, cpu, rss, cmd) in self._tree().items():
            self.cpu[pid] = cpu
            if pid == self.me:
                self.driver_peak = max(self.driver_peak, rss)
            elif cmd.startswith("ray::"):
                self.worker_peak = max(self.worker_peak, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._tick()

    def __enter__(self) -> Sampler:
        self._tick()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()

    @property
    def cpu_seconds(self) -> float:
        return sum(t - self.base.get(pid, 0.0) for pid, t in self.cpu.items())


def small_jpeg(rng: np.random.Generator, side: int = 64) -> bytes:
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((side, side), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (side, side, 3))
    img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def caption(rng: random.Random) -> str:
    return "a photo of a " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------


def write_curate_input(n: int, tmp: Path, base: str) -> None:
    """``tmp/web``: N small JPEGs (every 10th a copy of an earlier URL's bytes, every 10th a
    re-encoded near copy); ``tmp/src.parquet``: their URLs under ``base`` and captions. Run in a
    child process (``--make-curate-input``), so the driver's peak is the job's, not the inputs'."""
    rng, prng = np.random.default_rng(0), random.Random(0)
    names: list[str] = []
    for i in range(n):
        if i % 10 == 3 and i > 10:
            names.append(names[prng.randrange(i - 1)])  # the same URL's bytes: exact copy
            continue
        name = f"{i:07d}.jpg"
        data = small_jpeg(rng)
        if i % 10 == 7 and i > 10:  # a re-encoded copy of an earlier picture: near copy
            src = tmp / "web" / names[prng.randrange(i - 1)]
            buf = io.BytesIO()
            Image.open(src).save(buf, format="JPEG", quality=60)
            data = buf.getvalue()
        (tmp / "web" / name).write_bytes(data)
        names.append(name)
    pq.write_table(
        pa.table({"url": [f"{base}/{name}" for name in names],
                  "caption": [caption(prng) for _ in range(n)]}),
        tmp / "src.parquet", row_group_size=ROWS_PER_UNIT,
    )  # fmt: skip


@contextlib.contextmanager
def static_server(root: Path):
    """``python -m http.server`` on 127.0.0.1 in its own process (its buffers are not the
    driver's, and its CPU is the web's, not the job's); yields the base URL and its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://...) ..."
        port = int(line.split(" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_curate_stage(n: int, tmp: Path, workers: int) -> dict:
    from neo_data.curate.job import run_curate
    from neo_data.manifest import Manifest

    (tmp / "web").mkdir()
    with static_server(tmp / "web") as (base, server_pid):
        subprocess.run(
            [sys.executable, __file__, "--make-curate-input", str(n), str(tmp), base], check=True
        )
        manifest = Manifest.model_validate(
            {
                "name": "scale",
                "data": {"curated": [str(tmp / "out" / "samples")], "packed": str(tmp / "p")},
                "curate": {
                    "output": str(tmp / "out"),
                    # the loopback server is a private address: allowed here, as in the demo
                    "download": {"processes": workers, "threads": 32, "retries": 0,
                                 "rows_per_task": ROWS_PER_UNIT,
                                 "block_private_addresses": False},
                    "sources": [{"name": "scale", "path": str(tmp / "src.parquet")}],
                },
            }
        )  # fmt: skip
        with Sampler(exclude=(server_pid,)) as s:
            t0 = time.perf_counter()
            report = run_curate(manifest, concurrency=workers).report
            wall = time.perf_counter() - t0
    assert report["totals"]["rows_in"] == n, report["totals"]
    # every row downloads; what is dropped are the planted copies (10% exact, up to 10% near)
    assert report["totals"]["kept"] >= 0.75 * n, report["totals"]
    return _row(s, wall, n, kept=report["totals"]["kept"])


def dedup_inputs(n: int, tmp: Path) -> tuple[list, object]:
    """Candidate key files of ``n`` rows (units of ROWS_PER_UNIT) and the spec that reads them."""
    from neo_data.curate.plan import Unit
    from neo_data.manifest.curate import CurateSpec

    rng = np.random.default_rng(0)
    phash = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
    keys = np.array([f"img:{k:016x}" for k in rng.integers(0, 2**62, n)], dtype=object)
    rows = np.arange(n)
    exact = (rows % 10 == 3) & (rows > 10)
    src = rng.integers(0, np.maximum(rows, 1))
    keys[exact], phash[exact] = keys[src[exact]], phash[src[exact]]
    near = (rows % 10 == 7) & (rows > 10)
    flips = np.zeros(n, dtype=np.uint64)
    for _ in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)
    phash[near] = (phash[src[near]].view(np.uint64) ^ flips[near]).view(np.int64)
    units = []
    for c, start in enumerate(range(0, n, ROWS_PER_UNIT)):
        stop = min(n, start + ROWS_PER_UNIT)
        path = tmp / f"cand-{c:05d}.parquet"
        pq.write_table(
            pa.table({"row": rows[start:stop], "_dedup_key": list(keys[start:stop]),
                      "_phash": phash[start:stop]}),
            path,
        )  # fmt: skip
        size = path.stat().st_size
        units.append(
            Unit(f"scale-0000-{c:05d}", 0, str(path), "parquet", start, stop, start, size, None)
        )
    spec = CurateSpec.model_validate(
        {"output": str(tmp / "out"), "sources": [{"name": "scale", "path": "x.parquet"}]}
    )
    return units, spec


def run_dedup_stage(n: int, tmp: Path, workers: int) -> dict:
    from neo_data.curate.dedup_stage import run_dedup
    from neo_data.curate.job import _run_bounded

    units, spec = dedup_inputs(n, tmp)
    with Sampler() as s:
        t0 = time.perf_counter()
        _, stats = run_dedup(spec, units, lambda u: u.file, str(tmp / "out"), _run_bounded, workers)
        wall = time.perf_counter() - t0
    return _row(
        s,
        wall,
        n,
        duplicates=stats.get("dedup_duplicates_decided"),
        partitions=stats["dedup_partitions"],
    )


def run_pack_stage(n: int, tmp: Path, workers: int) -> dict:
    from neo_data.manifest import parse_manifest
    from neo_data.pack.job import run_pack
    from neo_data.synthetic.rows import ORIGINAL_PROVENANCE, curated_row, image_entry, write_curated

    rng, prng = np.random.default_rng(0), random.Random(0)
    pool = [small_jpeg(rng, 64 + 32 * (i % 4)) for i in range(64)]  # decode cost, not I/O
    for f, start in enumerate(range(0, n, 5_000)):
        rows = [
            curated_row("caption", f"scale-{i:09d}", "scale", i,
                        images=[image_entry(pool[(i * 7) % len(pool)])],
                        captions=[{"text": caption(prng), "provenance": ORIGINAL_PROVENANCE}])
            for i in range(start, min(n, start + 5_000))
        ]  # fmt: skip
        write_curated(str(tmp / "in" / f"in-{f:05d}.parquet"), rows, row_group_size=256)
    manifest = parse_manifest(
        f"name: scale\ndata: {{curated: [{tmp}/in], packed: {tmp}/packed}}\n"
        "pack: {text_ratio: 0.0, seq_len: 4096, min_pixels: 1024, max_pixels: 262144, "
        "buckets: [{name: all, max_image_tokens: 256}]}\n",
        "scale",
    )
    with Sampler() as s:
        t0 = time.perf_counter()
        index = run_pack(manifest, concurrency=workers).index
        wall = time.perf_counter() - t0
    return _row(s, wall, n, fill=round(index["totals"]["fill"], 4))


def _row(s: Sampler, wall: float, n: int, **extra) -> dict:
    return {"rows": n, "wall_s": wall, "cpu_s": s.cpu_seconds, "driver_mib": s.driver_peak / 2**20,
            "worker_mib": s.worker_peak / 2**20, **extra}  # fmt: skip


STAGES = {"curate": run_curate_stage, "dedup": run_dedup_stage, "pack": run_pack_stage}


def measure(stage: str, n: int, workers: int) -> dict:
    """One stage at one size in this process (Ray started here, outside the timing)."""
    from neo_data.ray_env import init_ray

    init_ray(num_cpus=workers)
    with tempfile.TemporaryDirectory(prefix="neo-scale-") as tmp:
        return STAGES[stage](n, Path(tmp), workers)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def table(results: dict[str, list[dict]], nodes: int, cores: int) -> str:
    lines = [
        f"{'stage':<8}{'rows':>11}{'wall s':>9}{'CPU s/1k':>10}{'vs first':>9}"
        f"{'driver MiB':>12}{'worker MiB':>12}{f'345M on {nodes} nodes, h':>24}"
    ]
    for stage, rows in results.items():
        first = rows[0]["cpu_s"] / rows[0]["rows"] if rows else 1.0
        for r in rows:
            per = r["cpu_s"] / r["rows"]
            hours = per * PAPER_ROWS / (nodes * cores) / 3600
            lines.append(
                f"{stage:<8}{r['rows']:>11,}{r['wall_s']:>9.1f}{per * 1000:>10.2f}"
                f"{per / first:>9.2f}{r['driver_mib']:>12.0f}{r['worker_mib']:>12.0f}{hours:>24.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--stages", default="curate,dedup,pack")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--max-curate", type=int, default=100_000, help="larger sizes: skipped")
    ap.add_argument("--max-pack", type=int, default=100_000, help="larger sizes: skipped")
    ap.add_argument("--nodes", type=int, default=16, help="machines like this one, projected")
    ap.add_argument("--inline", action="store_true", help="one process (tests); else one per run")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # stage:size, run by the parent
    ap.add_argument("--make-curate-input", nargs=3, help=argparse.SUPPRESS)  # N DIR BASE_URL
    args = ap.parse_args(argv)
    if args.make_curate_input:
        n, tmp, base = args.make_curate_input
        write_curate_input(int(n), Path(tmp), base)
        return {}
    if args.one:
        stage, n = args.one.split(":")
        print(json.dumps(measure(stage, int(n), args.workers)))
        return {}
    caps = {"curate": args.max_curate, "dedup": None, "pack": args.max_pack}
    results: dict[str, list[dict]] = {}
    for stage in args.stages.split(","):
        results[stage] = []
        for n in (int(x) for x in args.sizes.split(",")):
            if caps[stage] is not None and n > caps[stage]:
                print(f"{stage} at {n:,} rows: skipped (above --max-{stage})", file=sys.stderr)
                continue
            if args.inline:
                r = measure(stage, n, args.workers)
            else:
                run = subprocess.run(
                    [sys.executable, __file__, "--one", f"{stage}:{n}",
                     "--workers", str(args.workers)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if run.returncode:
                    raise SystemExit(f"{stage} at {n:,} rows failed:\n{run.stderr[-3000:]}")
                r = json.loads(run.stdout.strip().splitlines()[-1])
            results[stage].append(r)
            print(f"{stage} {n:,}: {json.dumps(r)}", file=sys.stderr, flush=True)
    cores = args.workers
    print(f"{os.cpu_count()} cores here, {cores} workers; projection: CPU-seconds per row x 345M "
          f"over {args.nodes} nodes x {cores} cores")  # fmt: skip
    print(table(results, args.nodes, cores))
    return results


if __name__ == "__main__":
    main()
