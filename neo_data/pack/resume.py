"""What a pack job's unfinished work covers, and the check that a rerun continues exactly that.

The manifest hash (``_work/manifest.sha256``) says which settings the work was made with; it
does not cover the inputs. ``_work/plan.json`` records the plan itself: every input file with
its size, ETag and row groups' rows, the units of every window and the text quota. Each window's
marker records the units it covers. A rerun whose inputs differ (a file added, removed or
rewritten; a glob that now matches more) would shift the windows under the markers -- rows
neither packed nor rejected, others packed twice -- so it refuses, saying what changed and how to
start over. The finished dataset's ``index.json`` keeps the inputs' digest for the same check.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import fsspec

from neo_data.format.schema import REJECTED_DIR, WORK_DIR
from neo_data.format.storage import OutputConflict, atomic_write, join
from neo_data.pack.plan import TextQuota, Unit, Window

PLAN_NAME = "plan.json"


def inputs_record(units: list[Unit]) -> dict:
    """The input files as planned (``files``: URL, size, ETag, rows per row group) and their
    ``sha256``."""
    files: dict[str, dict] = {}
    for u in units:
        f = files.setdefault(
            u.file, {"file": u.file, "size": u.file_size, "etag": u.etag, "row_groups": []}
        )
        f["row_groups"].append(u.num_rows)
    listing = list(files.values())
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "rows": sum(u.num_rows for u in units), "files": listing}


def plan_record(inputs: dict, windows: list[Window], quota: TextQuota) -> dict:
    return {
        "inputs": inputs,
        "text_quota": asdict(quota),
        "windows": [[u.unit_id for u in w.units] for w in windows],
    }


def describe_changes(old: list[dict], new: list[dict]) -> list[str]:
    """What differs between two ``inputs_record(...)["files"]`` lists, file by file."""
    before, after = {f["file"]: f for f in old}, {f["file"]: f for f in new}
    out = [f"{name} was added" for name in after if name not in before]
    out += [f"{name} was removed" for name in before if name not in after]
    for name in before.keys() & after.keys():
        a, b = before[name], after[name]
        diffs = [
            f"{what} {a[key]} -> {b[key]}"
            for key, what in (("size", "size"), ("etag", "ETag"))
            if a[key] != b[key]
        ]
        if a["row_groups"] != b["row_groups"]:
            diffs.append(f"row groups {a['row_groups']} -> {b['row_groups']}")
        if diffs:
            out.append(f"{name} changed ({', '.join(diffs)})")
    return sorted(out)


def _start_over(output: str) -> str:
    return (
        f"to start over delete {output}/{WORK_DIR}, {output}/shards and {output}/{REJECTED_DIR} "
        f"(or choose a new data.packed); to continue, restore the inputs it was planned with"
    )


def claim_plan(fs: fsspec.AbstractFileSystem, root: str, output: str, record: dict) -> None:
    """Record ``record`` as the plan of ``output``'s unfinished work, or check it is the one
    recorded; :class:`OutputConflict` names what changed."""
    path = join(root, WORK_DIR, PLAN_NAME)
    if not fs.exists(path):
        if fs.exists(markers := join(root, WORK_DIR, "windows")) and fs.ls(markers):
            raise OutputConflict(
                f"{output}/{WORK_DIR} holds windows packed without a recorded plan (an older "
                f"neo): their inputs cannot be checked; {_start_over(output)}"
            )
        atomic_write(fs, path, json.dumps(record, indent=1).encode())
        return
    with fs.open(path, "rb") as f:
        old = json.load(f)
    if old == record:
        return
    changes = describe_changes(old["inputs"]["files"], record["inputs"]["files"])
    what = "; ".join(changes) if changes else "the windows or the text quota differ"
    raise OutputConflict(
        f"{output}: its unfinished pack was planned for other inputs: {what}; {_start_over(output)}"
    )


def check_finished(index: dict, inputs: dict, output: str) -> None:
    """A finished dataset is complete for these inputs only (same digest), else refuse."""
    old = index.get("inputs") or {}
    if old.get("sha256") == inputs["sha256"]:
        return
    changes = describe_changes(old.get("files", []), inputs["files"]) if old else []
    what = "; ".join(changes) if changes else "its index records no inputs (an older neo)"
    raise OutputConflict(
        f"{output} was packed from other inputs: {what}; choose a new data.packed or delete "
        f"the old dataset"
    )


def marker_covers(window: Window) -> list[dict]:
    """What a window's marker records it covers: each unit's file, size, ETag, row group, rows."""
    return [asdict(u) for u in window.units]


def check_marker(doc: dict, window: Window, marker: str) -> None:
    """A marker is reused only for exactly the units it was written for."""
    if doc.get("covers") != marker_covers(window):
        raise OutputConflict(
            f"{marker} covers other input units than window {window.window_id} of this plan; "
            f"delete the {WORK_DIR} folder, shards and {REJECTED_DIR} of the output to start over"
        )
