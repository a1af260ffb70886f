"""What a curation output's work covers, and the checks that let a rerun use it.

A run records its plan in ``_work/plan.json`` before any unit runs: every input file (source,
URL, size, version tag: ETag or mtime) and every unit (file, rows ``[start, stop)``, first
source row, the file's size and version). Unit markers are matched by name, so a rerun may use
them only under the same plan: :func:`check_plan` continues exactly that plan or raises
:class:`OutputConflict` saying which files were added, removed or changed and how to start
over; each marker read for the report must say it covers its planned unit
(:func:`read_markers`). After a run, :func:`recount` counts every unit's rows again from the
files in ``samples/`` and ``rejected/`` -- not from the markers -- and the report must agree
with it (:func:`verify_against_outputs`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import pyarrow.parquet as pq

from neo_data.curate.plan import Unit
from neo_data.curate.sources import list_source_files
from neo_data.format.schema import WORK_DIR
from neo_data.format.storage import (
    OutputConflict,
    atomic_write,
    file_identity,
    join,
    list_names,
    url_to_fs,
)
from neo_data.manifest.curate import CurateSpec

PLAN_NAME = "plan.json"
PLAN_FORMAT = "neo.curate_plan"


def input_files(spec: CurateSpec) -> list[dict[str, Any]]:
    """Every input file of the section with its identity (a listing and one ``info`` per file:
    no file is read)."""
    out = []
    for source in spec.sources:
        for url in list_source_files(source):
            fs, path = url_to_fs(url)
            out.append({"source": source.name, "url": url, **file_identity(fs, path)})
    return out


def check_plan(output: str, spec: CurateSpec, units: list[Unit], unit_marker: Callable) -> None:
    """Record the plan of a first run, or check that a rerun's plan is the recorded one.

    Outputs from before plans were recorded: each existing unit marker must cover its unit of
    this plan (the same file and rows), else the rerun is refused as well."""
    fs, root = url_to_fs(output)
    path = join(root, WORK_DIR, PLAN_NAME)
    plan = {"format": PLAN_FORMAT, "files": input_files(spec), "units": [asdict(u) for u in units]}
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            old = json.load(f)
        if (old["files"], old["units"]) != (plan["files"], plan["units"]):
            raise OutputConflict(_changed(output, old, plan))
        return
    stale = []
    for u in units:
        marker = unit_marker(root, u.unit_id)
        if fs.exists(marker):
            with fs.open(marker, "rb") as f:
                covered = json.load(f)["unit"]
            if any(covered.get(k) != v for k, v in asdict(u).items() if k in covered):
                stale.append(f"{u.unit_id}: made for {_span(covered)}, now {_span(asdict(u))}")
    if stale:
        raise OutputConflict(
            f"{output}: its finished units cover other rows than this run would give them "
            f"(the inputs changed): {'; '.join(stale[:5])}{_more(stale)}. {_START_OVER}"
        )
    atomic_write(fs, path, json.dumps(plan).encode())


def check_inputs_unchanged(output: str, spec: CurateSpec) -> None:
    """A finished output is reused only while its inputs are the ones it was made from (an
    output from before plans were recorded is taken as it is)."""
    fs, root = url_to_fs(output)
    path = join(root, WORK_DIR, PLAN_NAME)
    if not fs.exists(path):
        return
    with fs.open(path, "rb") as f:
        old = json.load(f)
    files = input_files(spec)
    if old["files"] != files:
        raise OutputConflict(_changed(output, old, {"files": files, "units": old["units"]}))


_START_OVER = (
    "This output holds the work of the old inputs; choose a new curate.output for the new "
    "ones, or delete the output folder to start over"
)


def _changed(output: str, old: dict, new: dict) -> str:
    """What differs between two plans, in words."""
    key = lambda f: (f["source"], f["url"])  # noqa: E731
    before, after = {key(f): f for f in old["files"]}, {key(f): f for f in new["files"]}
    changes = [f"added {s}: {u}" for s, u in after.keys() - before.keys()]
    changes += [f"removed {s}: {u}" for s, u in before.keys() - after.keys()]
    for k in sorted(before.keys() & after.keys()):
        a, b = before[k], after[k]
        if (a["size"], a["version"]) != (b["size"], b["version"]):
            changes.append(
                f"changed {k[0]}: {k[1]} (size {a['size']} -> {b['size']}, "
                f"version {a['version']} -> {b['version']})"
            )
    if not changes:  # same files, other units: rows_per_task or the row counts differ
        for a, b in zip(old["units"], new["units"], strict=False):
            if a != b:
                changes.append(f"unit {a['unit_id']}: {_span(a)} -> {_span(b)}")
                break
        if len(old["units"]) != len(new["units"]):
            changes.append(f"{len(old['units'])} units -> {len(new['units'])}")
    changes.sort()
    return (
        f"{output} was started on other inputs than this run's: {'; '.join(changes[:8])}"
        f"{_more(changes, 8)}. {_START_OVER}"
    )


def _span(u: dict) -> str:
    return f"{u.get('file')} rows {u.get('start')}-{u.get('stop')}"


def _more(items: list, shown: int = 5) -> str:
    return f" (and {len(items) - shown} more)" if len(items) > shown else ""


# ---------------------------------------------------------------------------------------------
# Markers and outputs
# ---------------------------------------------------------------------------------------------


def done_units(fs, root: str, stage: str) -> set[str]:
    """Ids of the units whose ``stage`` is done (one listing, not one request per unit)."""
    return {n.removesuffix(".json") for n in list_names(fs, join(root, WORK_DIR, stage), ".json")}


def read_markers(fs, root: str, units: list[Unit], paths_of: Callable) -> list[tuple[dict, dict]]:
    """Every unit's two markers (curated, finalized); each must cover its planned unit."""

    def read(u: Unit) -> tuple[dict, dict]:
        p = paths_of(root, u.unit_id)
        with fs.open(p["unit_marker"], "rb") as a, fs.open(p["final_marker"], "rb") as b:
            m, f = json.load(a), json.load(b)
        if m["unit"] != asdict(u):
            raise OutputConflict(
                f"{p['unit_marker']} covers {_span(m['unit'])}, the plan {_span(asdict(u))}. "
                f"{_START_OVER}"
            )
        return m, f

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(read, units))


def recount(fs, root: str, units: list[Unit], paths_of: Callable) -> dict[str, dict]:
    """Per unit id: ``kept`` and ``rejected`` (by reason), counted from the output files; raise
    when a unit's input rows are not each in exactly one of them, or when ``samples/`` or
    ``rejected/`` hold a file of no unit of the plan."""
    keys = ("samples", "rejected", "dup_rejected")
    folders = {paths_of(root, u.unit_id)[k].rsplit("/", 1)[0] for u in units[:1] for k in keys}
    listed = {d: list_names(fs, d) for d in folders}
    mine: dict[str, set[str]] = {d: set() for d in listed}

    def one(u: Unit) -> tuple[str, dict]:
        p = paths_of(root, u.unit_id)
        rows, kept, reasons = [], 0, Counter()
        for key in keys:
            folder, name = p[key].rsplit("/", 1)
            if name not in listed[folder]:
                continue
            mine[folder].add(name)
            cols = ["row"] if key == "samples" else ["row", "reason"]
            with fs.open(p[key], "rb") as f:
                t = pq.read_table(f, columns=cols)
            rows += t.column("row").to_pylist()
            if key == "samples":
                kept += t.num_rows
            else:
                reasons.update(t.column("reason").to_pylist())
        expected = range(u.first_row, u.first_row + u.stop - u.start)
        if sorted(rows) != list(expected):
            seen = Counter(rows)
            missing = sum(1 for r in expected if r not in seen)
            twice = sum(n - 1 for n in seen.values() if n > 1)
            raise RuntimeError(
                f"unit {u.unit_id} ({_span(asdict(u))}): its outputs hold {len(rows)} rows for "
                f"{len(expected)} input rows ({missing} missing, {twice} repeated)"
            )
        return u.unit_id, {"kept": kept, "rejected": reasons}

    with ThreadPoolExecutor(max_workers=16) as pool:
        counted = dict(pool.map(one, units))
    for folder, names in listed.items():
        stray = sorted(names - mine[folder])
        if stray:
            raise RuntimeError(
                f"{folder} holds files of no unit of this run: {stray[:5]}{_more(stray)}"
            )
    return counted


def verify_against_outputs(
    report: dict, spec: CurateSpec, units: list[Unit], counted: dict[str, dict]
) -> None:
    """The report's counts (from the markers) equal the outputs' (``recount``), per source;
    its ``rows_in`` equals the plan's."""
    for si, source in enumerate(spec.sources):
        mine = [u for u in units if u.source == si]
        kept = sum(counted[u.unit_id]["kept"] for u in mine)
        rejected = sum((counted[u.unit_id]["rejected"] for u in mine), Counter())
        rows = sum(u.stop - u.start for u in mine)
        b = report["by_source"][source.name]
        if (b["rows_in"], b["kept"], b["rejected"]) != (rows, kept, dict(sorted(rejected.items()))):
            raise RuntimeError(
                f"source {source.name}: the markers count {b['rows_in']} rows in, {b['kept']} "
                f"kept, rejected {b['rejected']}; the plan and the outputs {rows} rows in, {kept} "
                f"kept, rejected {dict(sorted(rejected.items()))}"
            )
