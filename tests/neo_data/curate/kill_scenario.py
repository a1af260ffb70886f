"""``kill -9`` at random points of ``neo curate``, then reruns: the output must be byte-identical
to an uninterrupted run's. Not a test module: run it as

    python -m tests.neo_data.curate.kill_scenario --kills 20 [--seed 0] [--work DIR]

(``tests/neo_data/curate/test_kill.py`` runs it with 2 kills). A loopback crawl server (this
process) serves a corpus with every deterministic outcome: kept images, duplicates (exact,
near), download failures, filter drops, bad rows in CSV and JSONL, conversations, texts. One
reference run; then rounds: each round starts on an empty output and kills ``pipelines.curate``
(its whole session: driver, local Ray, workers; :mod:`tests.killing`) after a random delay in
[0, the reference run's duration], again and again, until a run ends by itself; its output is compared with the
reference's: every file of ``samples/`` and ``rejected/`` byte for byte, ``report.json`` but its
timing, and no temporary file left anywhere. Prints one line per kill (when it struck: markers
written so far) and exits 0 only when every round matched.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from neo_data.synthetic.crawl import TEST_FILTERS, CrawlServer, encode, images, smooth_image
from tests import killing

VOLATILE = ("created_at", "timing", "throughput", "output", "manifest")  # of report.json:
# the manifest entry holds the section hash, which covers the output path (another folder here)


def corpus_files() -> dict[str, tuple[bytes, str]]:
    return {f"/k/{i}.png": (encode(smooth_image(500 + i, 60 + i, 50 + i), "PNG"), "image/png")
            for i in range(24)}  # fmt: skip


def write_corpus(server: CrawlServer, root: Path) -> None:
    """Four sources, about 50 rows, each outcome deterministic (no timing-dependent case)."""
    good = "a photo number {} of a quiet street with trees"
    rows = [{"url": server.url(f"/k/{i}.png"), "caption": good.format(i)} for i in range(20)]
    rows += [
        {"url": server.url("/k/3.png"), "caption": "the same street photo under another row"},
        {"url": server.url("/img/near_orig.jpg"), "caption": "the original of a harbour photo"},
        {"url": server.url("/img/near_copy.jpg"), "caption": "a smaller copy of the harbour"},
        {"url": server.url("/status/404"), "caption": good.format("gone")},
        {"url": server.url("/text"), "caption": good.format("text")},
        {"url": server.url("/img/tiny.png"), "caption": good.format("tiny")},
        {"url": "http://exa mple.com/x.png", "caption": good.format("bad url")},
        {"url": server.url("/img/png.png"), "caption": "une photo d'un chat noir sur la fenêtre"},
        {"url": server.url("/gzip/gzipped.png"), "caption": "a compressed answer of a bridge"},
        {"url": server.url("/to/file"), "caption": good.format("file redirect")},
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "web.parquet", row_group_size=7)
    csv = (
        [b"url,caption"]
        + [
            f"{server.url(f'/k/{i}.png')},a csv photo {i} of a garden path".encode()
            for i in (20, 21, 22)
        ]
        + [b"too,many,fields", f"{server.url('/k/3.png')},a copy of the street photo".encode()]
    )
    (root / "extra.csv").write_bytes(b"\n".join(csv) + b"\n")
    chat = [
        {"images": [server.url("/k/23.png")], "conversation": [
            {"role": "user", "content": "<image> what is this?"},
            {"role": "assistant", "content": "a street"}]},
        {"images": [], "conversation": [{"role": "user", "content": "hello \ud800"},
                                        {"role": "assistant", "content": "hi"}]},
    ]  # fmt: skip
    lines = [json.dumps(c) for c in chat] + ['{"images": [']
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n")
    doc = "Document {}: the harbour wakes early and the boats leave before dawn to fish."
    (root / "docs.jsonl").write_text(
        "\n".join(json.dumps({"text": doc.format(i % 6)}) for i in range(9)) + "\n"
    )


def manifest_text(root: Path, output: Path) -> str:
    download = {"threads": 4, "rows_per_task": 3, "processes": 2, "timeout_s": 2,
                "deadline_s": 5, "retries": 1, "block_private_addresses": False}  # fmt: skip
    curate = {
        "output": str(output),
        "download": download,
        "filters": TEST_FILTERS,
        "sources": [
            {"name": "web", "path": str(root / "web.parquet")},
            {"name": "extra", "path": str(root / "extra.csv")},
            {"name": "chat", "path": str(root / "chat.jsonl"), "kind": "conversation",
             "filters": {"languages": []}},
            {"name": "docs", "path": str(root / "docs.jsonl"), "kind": "text"},
        ],
    }  # fmt: skip
    return yaml.safe_dump({"name": "kill", "data": {"curated": ["x"], "packed": "y"},
                           "curate": curate})  # fmt: skip


READY = "Started a local Ray instance"  # what ray.init prints once the local Ray is up


def start(manifest: Path, log_file: Path) -> subprocess.Popen:
    log_file.write_bytes(b"")  # wait_ready looks for this run's READY line only
    cmd = [sys.executable, "-m", "pipelines.curate", "--manifest", str(manifest)]
    return killing.start(cmd, log_file)


def wait_ready(proc: subprocess.Popen, log_file: Path, timeout: float) -> float | None:
    """Seconds until the run's local Ray is up (None if it ended or took over ``timeout``)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout and proc.poll() is None:
        if READY in log_file.read_text(errors="replace"):
            return time.perf_counter() - t0
        time.sleep(0.05)
    return None


def progress(out: Path) -> str:
    work = out / "_work"
    n = lambda d: len(list((work / d).glob("*.json")))  # noqa: E731
    parts = [f"{n('units')} curated", f"{n('final')} finalized"]
    if (work / "dedup.parquet").exists():
        parts.append("dedup decided")
    if (out / "report.json").exists():
        parts.append("report written")
    return ", ".join(parts) if work.exists() else "nothing written"


def differences(a: Path, b: Path) -> list[str]:
    return killing.compare(a, b, ("samples", "rejected"), "report.json", VOLATILE)


def run(work: Path, kills: int, seed: int, log=print, in_process: bool = False) -> dict:
    """The scenario; returns ``{"kills", "rounds", "differences"}``. ``in_process``: the
    reference run in this process, on the Ray it is connected to (a test's; one Ray start
    fewer), its duration standing for the curation's span."""
    rng = random.Random(seed)
    images()
    with CrawlServer(files=corpus_files(), stall_s=1.0) as server:
        (work / "in").mkdir(parents=True, exist_ok=True)
        write_corpus(server, work / "in")
        ref = work / "reference"
        (work / "ref.yaml").write_text(manifest_text(work / "in", ref))
        err = work / "run.log"
        t0 = time.perf_counter()
        if in_process:
            from neo_data.curate.job import run_curate
            from neo_data.manifest import parse_manifest

            run_curate(parse_manifest((work / "ref.yaml").read_text(), "ref.yaml"))
            t_ready, span = 5.0, time.perf_counter() - t0
        else:
            proc = start(work / "ref.yaml", err)
            ready = wait_ready(proc, err, 300)
            t_ready = time.perf_counter() - t0
            if not killing.finish(proc, 600) or proc.returncode != 0 or ready is None:
                raise RuntimeError(f"the reference run failed:\n{err.read_text()[-3000:]}")
            span = time.perf_counter() - t0 - t_ready  # the curation itself, after Ray is up
        log(f"reference run: Ray up in {t_ready:.1f} s, curation {span:.1f} s, {progress(ref)}")
        out = work / "killed"
        (work / "killed.yaml").write_text(manifest_text(work / "in", out))
        done, rounds, diffs = 0, 0, []
        while done < kills:
            shutil.rmtree(out, ignore_errors=True)
            rounds += 1
            while True:  # one round: kill until a run ends by itself
                proc = start(work / "killed.yaml", err)
                if done >= kills:  # the last run of the round: uninterrupted
                    ended = killing.finish(proc, 600)
                elif rng.random() < 0.1:  # now and then while Ray starts
                    delay = rng.uniform(0.0, t_ready)
                    ended = killing.finish(proc, delay)
                    when = f"{delay:5.1f} s after start"
                else:  # mostly during the curation: units, dedup, finalize, report
                    wait_ready(proc, err, 300)
                    delay = rng.uniform(0.0, span)
                    ended = killing.finish(proc, delay)
                    when = f"{delay:5.1f} s after Ray was up"
                if not ended:
                    done += 1
                    log(f"kill {done:>3} (round {rounds}) {when}: {progress(out)}")
                    continue
                if proc.returncode != 0:
                    raise RuntimeError(f"a rerun failed:\n{err.read_text()[-3000:]}")
                break
            found = differences(ref, out)
            log(f"round {rounds}: the run ended by itself; "
                + ("identical to the reference" if not found else f"DIFFERS: {found[:5]}"))  # fmt: skip
            diffs += found
    return {"kills": done, "rounds": rounds, "differences": diffs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="a folder to keep (default: a temporary one)")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="neo-kill-"))
    result = run(work, args.kills, args.seed)
    print(f"\n{result['kills']} kills in {result['rounds']} rounds: "
          + ("every round byte-identical to the uninterrupted run" if not result["differences"]
             else f"{len(result['differences'])} differences"))  # fmt: skip
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not result["differences"] else 1


if __name__ == "__main__":
    sys.exit(main())
