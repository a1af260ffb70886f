"""Counting a recaption output again from its files, not from its markers.

A marker (``_work/<name>.json``) says an input file is done and how its rows went; the report
is summed from the markers. A marker can outlive its output (a ``samples/`` file deleted or
truncated, a ``failures/`` file lost), so after every run :func:`recount` reads the outputs
themselves against each input file -- every input row in ``samples/<name>`` exactly once and in
order (by ``sample_id``), each row of ``failures/<name>`` one selected input row, each selected
row either carrying this spec's new caption or listed as failed -- and
:func:`verify_markers` refuses a marker whose counts differ from the outputs'. Either error
names the file and the rows, and says how to redo it.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq

from neo_data.format.schema import WORK_DIR
from neo_data.format.storage import OutputConflict, join, list_names, url_to_fs
from neo_data.manifest.recaption import RecaptionSpec
from neo_data.recaption.output import FAILURES_DIR, SAMPLES_DIR, FileDone, InputFile, provenance


def skip_reason(kind: str, source: str, spec: RecaptionSpec) -> str | None:
    """Why a row is not captioned (``kind_not_caption``, ``source_not_selected``), or None."""
    if kind != "caption":
        return "kind_not_caption"
    if spec.sources is not None and source not in spec.sources:
        return "source_not_selected"
    return None


class OutputsDisagree(OutputConflict):
    """The files of a recaption output do not hold what its inputs and markers say (an
    :class:`OutputConflict`: the jobs print it as an error the user acts on)."""


def _redo(name: str) -> str:
    return f"delete _work/{name}.json (its marker) and rerun to redo that file"


def _rows(ids: list, of: list) -> str:
    """Rows of ``of`` (by position) named with their sample ids, the first few."""
    shown = ", ".join(f"row {of.index(i)} ({i})" if i in of else str(i) for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def recount_file(fs, root: str, spec: RecaptionSpec, file: InputFile) -> dict:
    """One input file's ``rows``, ``recaptioned``, ``failed`` and ``skipped`` (by reason),
    counted from its input, ``samples/<name>`` and ``failures/<name>``; raises
    :class:`OutputsDisagree` naming the file and the rows that are missing, extra or repeated."""
    in_fs, in_path = url_to_fs(file.url)
    with in_fs.open(in_path, "rb") as f:
        inp = pq.read_table(f, columns=["sample_id", "kind", "source"]).to_pydict()
    ids = inp["sample_id"]
    samples = join(root, SAMPLES_DIR, file.name)
    where = f"{spec.output}/{SAMPLES_DIR}/{file.name} (input {file.url})"
    if not fs.exists(samples):
        raise OutputsDisagree(f"{where} is missing; {_redo(file.name)}")
    with fs.open(samples, "rb") as f:
        out = pq.read_table(f, columns=["sample_id", "captions"]).to_pydict()
    if out["sample_id"] != ids:
        have, want = Counter(out["sample_id"]), Counter(ids)
        missing = [i for i in ids if have[i] < want[i]]
        extra = [i for i in out["sample_id"] if want[i] < have[i]]
        what = [f"{len(out['sample_id'])} rows for {len(ids)} input rows"]
        if missing:
            what.append(f"missing {_rows(missing, ids)}")
        if extra:
            what.append(f"extra or repeated {_rows(sorted(set(extra)), ids)}")
        if not missing and not extra:
            what.append("the rows are out of input order")
        raise OutputsDisagree(f"{where} holds {'; '.join(what)}; {_redo(file.name)}")

    skips = [skip_reason(k, s, spec) for k, s in zip(inp["kind"], inp["source"], strict=True)]
    failed, failed_rows = Counter(), set()
    failures = join(root, FAILURES_DIR, file.name)
    if fs.exists(failures):
        with fs.open(failures, "rb") as f:
            t = pq.read_table(f, columns=["input_row", "reason"]).to_pydict()
        for row, reason in zip(t["input_row"], t["reason"], strict=True):
            if not 0 <= row < len(ids) or skips[row] is not None or row in failed_rows:
                raise OutputsDisagree(
                    f"{spec.output}/{FAILURES_DIR}/{file.name} lists input row {row}, which is "
                    f"not a captioned row of {file.url} or is listed twice; {_redo(file.name)}"
                )
            failed_rows.add(row)
            failed[reason] += 1
    prov = {k: v for k, v in provenance(spec).items() if k != "created_at"}
    at = 0 if spec.policy == "replace" else -1  # where apply_policy puts the new caption
    unaccounted = []
    for row, caps in enumerate(out["captions"]):
        if skips[row] is not None or row in failed_rows:
            continue
        new = ((caps or [None])[at] or {}).get("provenance") or {}
        if {k: new.get(k) for k in prov} != prov:
            unaccounted.append(ids[row])
    if unaccounted:
        raise OutputsDisagree(
            f"{where}: {_rows(unaccounted, ids)} neither carry this run's new caption nor are "
            f"listed in {FAILURES_DIR}/{file.name}; {_redo(file.name)}"
        )
    return {
        "rows": len(ids),
        "recaptioned": len(ids) - len(failed_rows) - sum(s is not None for s in skips),
        "failed": dict(failed),
        "skipped": dict(Counter(s for s in skips if s is not None)),
    }


def recount(fs, root: str, spec: RecaptionSpec, files: list[InputFile]) -> dict[str, dict]:
    """:func:`recount_file` for every input file, by output name; raises when ``samples/`` or
    ``failures/`` hold a file of no input of this run."""
    names = {f.name for f in files}
    for folder in (SAMPLES_DIR, FAILURES_DIR):
        stray = sorted(list_names(fs, join(root, folder)) - names)
        if stray:
            raise OutputsDisagree(
                f"{spec.output}/{folder} holds files of no input of this run: {stray[:5]}; "
                "the inputs changed since this output was made: choose a new recaption.output"
            )
    return {f.name: recount_file(fs, root, spec, f) for f in files}


def verify_markers(spec: RecaptionSpec, markers: list[FileDone], counted: dict[str, dict]) -> None:
    """Each marker's counts equal the ones :func:`recount` read from the outputs."""
    for m in markers:
        name = m.output.rsplit("/", 1)[-1]
        said = {"rows": m.rows, "recaptioned": m.recaptioned, "failed": m.failed,
                "skipped": m.skipped}  # fmt: skip
        if said != counted[name]:
            raise OutputsDisagree(
                f"{spec.output}/{WORK_DIR}/{name}.json counts {said}, but the outputs of "
                f"{m.input} hold {counted[name]}; {_redo(name)}"
            )
