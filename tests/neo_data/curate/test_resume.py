"""Resuming a curation: a rerun continues exactly the recorded plan or refuses, saying what
changed; the report is checked against the rows counted in the outputs; a retried unit leaves
nothing of its first attempt. Text sources (no download), so the runs take seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from neo_data.curate.job import curate_unit, run_curate
from neo_data.curate.plan import plan_units
from neo_data.format.storage import OutputConflict
from neo_data.manifest import parse_manifest
from neo_data.manifest.curate import CurateSpec
from neo_data.synthetic.crawl import TEST_DOWNLOAD, CrawlServer


def docs(name: str, n: int) -> pa.Table:
    text = "Document {} of {}: the harbour wakes early and the boats leave before dawn."
    return pa.table({"text": [text.format(i, name) for i in range(n)]})


def manifest(root: Path):
    curate = {"output": str(root / "out"), "download": {"rows_per_task": 4, "processes": 2},
              "sources": [{"name": "docs", "path": str(root / "in" / "*.parquet"),
                           "kind": "text"}]}  # fmt: skip
    text = yaml.safe_dump({"name": "resume", "data": {"curated": ["x"], "packed": "y"},
                           "curate": curate})  # fmt: skip
    return parse_manifest(text, "resume.yaml")


@pytest.fixture(scope="module")
def first(ray_local, tmp_path_factory):
    """One finished run over in/b.parquet (10 rows), kept as a pristine copy."""
    root = tmp_path_factory.mktemp("resume")
    (root / "in").mkdir()
    pq.write_table(docs("b", 10), root / "in" / "b.parquet")
    result = run_curate(manifest(root))
    shutil.copytree(root, root.parent / "pristine", copy_function=shutil.copy2)
    return root, result.report


@pytest.fixture()
def fresh(first):
    """The first run's inputs and output as they were (inputs keep their mtime)."""
    root, report = first
    shutil.rmtree(root)
    shutil.copytree(root.parent / "pristine", root, copy_function=shutil.copy2)
    return root, report


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_an_input_sorted_before_the_others_is_refused_not_dropped(fresh):
    """Killed before its report, then one more file matches the glob, ahead of b: the units'
    names now mean a's rows. The rerun refuses, naming the file, and writes nothing."""
    root, _ = fresh
    (root / "out" / "report.json").unlink()
    pq.write_table(docs("a", 6), root / "in" / "a.parquet")
    before = files(root / "out")
    with pytest.raises(OutputConflict) as e:
        run_curate(manifest(root))
    assert "added docs: " in str(e.value) and "a.parquet" in str(e.value)
    assert "new curate.output" in str(e.value) and "delete the output folder" in str(e.value)
    assert files(root / "out") == before


def test_a_finished_output_refuses_changed_inputs(fresh):
    root, _ = fresh
    pq.write_table(docs("b", 11), root / "in" / "b.parquet")  # one row more, same name
    with pytest.raises(OutputConflict, match=r"changed docs: .*b\.parquet \(size \d+ -> \d+"):
        run_curate(manifest(root))


def test_markers_of_an_output_without_a_plan_are_checked(fresh):
    """An output made before plans were recorded: its markers must cover the planned units."""
    root, _ = fresh
    (root / "out" / "report.json").unlink()
    (root / "out" / "_work" / "plan.json").unlink()
    pq.write_table(docs("a", 6), root / "in" / "a.parquet")
    with pytest.raises(OutputConflict, match="cover other rows"):
        run_curate(manifest(root))


def test_an_unchanged_rerun_resumes_and_counts_the_outputs(fresh):
    root, report = fresh
    (root / "out" / "report.json").unlink()
    again = run_curate(manifest(root))
    assert again.report["timing"]["units_run"] == 0 and again.report["totals"] == report["totals"]


def test_the_report_is_checked_against_the_outputs_not_the_markers(fresh):
    root, _ = fresh
    (root / "out" / "report.json").unlink()
    lost = sorted((root / "out" / "samples").glob("*.parquet"))[1]
    lost.unlink()  # the markers still count its rows
    with pytest.raises(RuntimeError, match=r"unit docs-0000-00001 .* 0 rows for 4 input rows"):
        run_curate(manifest(root))


def test_a_stray_output_file_is_named(fresh):
    root, _ = fresh
    (root / "out" / "report.json").unlink()
    samples = root / "out" / "samples"
    shutil.copy(samples / "docs-0000-00000.parquet", samples / "docs-0001-00000.parquet")
    with pytest.raises(RuntimeError, match=r"no unit of this run: \['docs-0001-00000.parquet'\]"):
        run_curate(manifest(root))


def test_a_retry_that_rejects_nothing_leaves_no_rejected_part(tmp_path):
    """The first attempt of a unit meets a 503 (rejected part written), is killed before its
    marker; the retry gets the image: the first attempt's rejection must not stay."""
    with CrawlServer() as server:
        pq.write_table(pa.table({"url": [server.url("/flaky/1/gzipped.png")],
                                 "caption": ["a picture of a bridge over a river"]}),
                       tmp_path / "web.parquet")  # fmt: skip
        spec = CurateSpec.model_validate({
            "output": str(tmp_path / "out"), "download": {**TEST_DOWNLOAD, "retries": 0},
            "filters": {"min_side": 16}, "sources": [{"name": "web", "path": str(tmp_path / "web.parquet")}],
        })  # fmt: skip
        (unit,) = plan_units(spec)
        first = curate_unit(spec.model_dump_json(), unit, spec.output)
        assert first["rejected"] == {"http_server_error": 1}
        rejected = tmp_path / "out" / "rejected" / f"{unit.unit_id}.parquet"
        assert rejected.exists()
        second = curate_unit(spec.model_dump_json(), unit, spec.output)
        assert (second["candidates"], second["rejected"]) == (1, {})
        assert not rejected.exists()
        marker = json.loads(
            (tmp_path / "out" / "_work" / "units" / f"{unit.unit_id}.json").read_text()
        )
        assert marker["unit"]["size"] == (tmp_path / "web.parquet").stat().st_size
