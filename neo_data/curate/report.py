"""The curation report: ``report.json`` (written last, the commit point of a run), the check
that every input row was kept or rejected with a reason, and the table printed at the end."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from neo_data.curate.plan import Unit
from neo_data.manifest import Manifest
from neo_data.manifest.curate import CurateSpec

REPORT_NAME = "report.json"
REPORT_FORMAT = "neo.curate_report"
REPORT_VERSION = 1


def make_report(
    manifest: Manifest,
    spec: CurateSpec,
    shash: str,
    units: list[Unit],
    markers: list[tuple[dict, dict]],
    timing: dict[str, Any],
) -> dict[str, Any]:
    """The report of a run from every unit's two markers (curated, finalized): counts per
    source and reason, bytes, throughput and timing."""
    by_source: dict[str, dict[str, Any]] = {}
    for s in spec.sources:
        by_source[s.name] = {
            "kind": s.kind,
            "units": 0,
            "rows_in": 0,
            "kept": 0,
            "rejected": Counter(),
            "images_downloaded": 0,
            "bytes_downloaded": 0,
            "images_kept": 0,
            "bytes_kept": 0,
        }
    worker = Counter()
    max_rss = 0.0
    for u, (m, f) in zip(units, markers, strict=True):
        b = by_source[spec.sources[u.source].name]
        b["units"] += 1
        b["rows_in"] += m["rows_in"]
        b["kept"] += f["kept"]
        b["rejected"].update(m["rejected"])
        b["rejected"].update(f["rejected"])
        b["images_downloaded"] += m["images_downloaded"]
        b["bytes_downloaded"] += m["bytes_downloaded"]
        b["images_kept"] += f["images_kept"]
        b["bytes_kept"] += f["bytes_kept"]
        worker.update(seconds=m["seconds"], fetch_seconds=m["fetch_seconds"])
        max_rss = max(max_rss, m["max_rss_mib"])
    by_reason: Counter = Counter()
    for b in by_source.values():
        by_reason.update(b["rejected"])
        b["rejected"] = dict(sorted(b["rejected"].items()))
    totals = {
        k: sum(b[k] for b in by_source.values())
        for k in ("rows_in", "kept", "images_downloaded", "bytes_downloaded", "images_kept",
                  "bytes_kept")
    }  # fmt: skip
    totals["rejected"] = sum(by_reason.values())
    secs = timing["seconds"] or 1e-9
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "manifest": {"name": manifest.name, "curate_sha256": shash},
        "output": spec.output,
        "totals": totals,
        "by_reason": dict(sorted(by_reason.items())),
        "by_source": by_source,
        "throughput": {
            "rows_per_s": round(totals["rows_in"] / secs, 2),
            "images_per_s": round(totals["images_downloaded"] / secs, 2),
            "download_mib_per_s": round(totals["bytes_downloaded"] / secs / 2**20, 3),
            "note": "this run's wall clock; a resumed run counts earlier units' rows too",
        },
        "timing": {
            **timing,
            "units": len(units),
            "worker_seconds": round(worker["seconds"], 3),
            "fetch_seconds": round(worker["fetch_seconds"], 3),
            "max_worker_rss_mib": max_rss,
        },
    }


def verify_report(report: dict) -> None:
    """Every input row is kept or rejected with a reason (raise if not)."""
    for name, b in report["by_source"].items():
        out = b["kept"] + sum(b["rejected"].values())
        if out != b["rows_in"]:
            raise RuntimeError(f"source {name}: {b['rows_in']} rows in but {out} kept or rejected")


def format_report(report: dict) -> str:
    """The table printed at the end of a curation run."""
    t = report["totals"]
    lines = [f"curation {report['manifest']['name']} -> {report['output']}"]
    w = max([len("source"), len("total"), *(len(n) for n in report["by_source"])]) + 2
    k = max([len("kind"), *(len(b["kind"]) for b in report["by_source"].values())]) + 2
    lines.append(
        f"  {'source':<{w}}{'kind':<{k}}{'rows in':>9}{'kept':>9}{'rejected':>9}{'MiB in':>9}"
        f"{'MiB kept':>9}"
    )
    for name, b in report["by_source"].items():
        lines.append(
            f"  {name:<{w}}{b['kind']:<{k}}{b['rows_in']:>9,}{b['kept']:>9,}"
            f"{sum(b['rejected'].values()):>9,}{b['bytes_downloaded'] / 2**20:>9.1f}"
            f"{b['bytes_kept'] / 2**20:>9.1f}"
        )
    lines.append(
        f"  {'total':<{w + k}}{t['rows_in']:>9,}{t['kept']:>9,}{t['rejected']:>9,}"
        f"{t['bytes_downloaded'] / 2**20:>9.1f}{t['bytes_kept'] / 2**20:>9.1f}"
    )
    if report["by_reason"]:
        lines.append("")
        lines.append(f"  {'rejected because':<28}{'rows':>9}")
        for reason, n in report["by_reason"].items():
            lines.append(f"  {reason:<28}{n:>9,}")
    tp, tm = report["throughput"], report["timing"]
    lines.append("")
    lines.append(
        f"  {tm['seconds']:.1f} s ({tm['units_run']} units run, {tm['units_resumed']} resumed): "
        f"{tp['rows_per_s']:,.1f} rows/s, {tp['images_per_s']:,.1f} images/s, "
        f"{tp['download_mib_per_s']:.2f} MiB/s; peak worker RSS {tm['max_worker_rss_mib']:.0f} MiB"
    )
    return "\n".join(lines)
