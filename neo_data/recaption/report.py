"""The recaption report: ``report.json`` (counts by reason, provenance, timing; written last)
and the lines printed at the end of a run."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime

from neo_data.manifest import Manifest
from neo_data.recaption.output import FileDone, provenance

REPORT_NAME = "report.json"


def make_report(manifest: Manifest, markers: list[FileDone], seconds: float) -> dict:
    """The report of a run from every input file's marker (raises if the counts do not add up:
    every row is recaptioned, failed or skipped)."""
    spec = manifest.recaption
    assert spec is not None
    failed, skipped = Counter(), Counter()
    for m in markers:
        failed.update(m.failed)
        skipped.update(m.skipped)
    rows = sum(m.rows for m in markers)
    recaptioned = sum(m.recaptioned for m in markers)
    if rows != recaptioned + sum(failed.values()) + sum(skipped.values()):
        raise AssertionError(f"recaption counts do not add up: {rows} rows in, markers {markers}")
    return {
        "format": "neo.recaption.report",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "manifest": {"name": manifest.name, "sha256": manifest.content_hash()},
        "provenance": {k: v for k, v in provenance(spec).items() if k != "created_at"},
        "policy": spec.policy,
        "packing": {
            "caption_choice": manifest.pack.caption_choice,
            "recaption_ratio": manifest.pack.recaption_ratio,
        },
        "totals": {
            "rows": rows,
            "recaptioned": recaptioned,
            "failed": dict(sorted(failed.items())),
            "skipped": dict(sorted(skipped.items())),
        },
        "seconds": round(seconds, 3),
        "files": [asdict(m) for m in markers],
    }


def format_report(report: dict) -> str:
    """The lines printed at the end of a recaption run."""
    t = report["totals"]
    lines = [
        f"rows        {t['rows']}",
        f"recaptioned {t['recaptioned']}",
        *(f"failed      {n:>6}  {reason}" for reason, n in t["failed"].items()),
        *(f"skipped     {n:>6}  {reason}" for reason, n in t["skipped"].items()),
        f"policy      {report['policy']} (pack.caption_choice "
        f"{report['packing']['caption_choice']})",
        f"seconds     {report['seconds']}",
    ]
    return "\n".join(lines)
