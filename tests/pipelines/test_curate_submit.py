"""`ray job submit` of the curation job to a real local Ray cluster (token auth on), against the
loopback crawl server this test starts."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from neo_data.synthetic.crawl import CASES, TEST_DOWNLOAD, TEST_FILTERS, CrawlServer, case_url  # noqa: E402
from tests.helpers import free_port  # noqa: E402

pytestmark = pytest.mark.slow
PICK = ("jpeg", "png", "exif", "dup_a", "dup_b", "http404", "truncated", "bomb", "french")


def test_curate_job_through_ray_job_submit(ray_cluster, tmp_path):
    cases = [c for c in CASES if c.name in PICK]
    with CrawlServer() as server:
        rows = [{"url": case_url(server, c, free_port()), "caption": c.caption} for c in cases]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "web.parquet")
        out = tmp_path / "curated"
        manifest = {
            "name": "curate-submit",
            "data": {"curated": [str(out / "samples")], "packed": str(tmp_path / "packed")},
            "curate": {
                "output": str(out),
                "download": {**TEST_DOWNLOAD, "rows_per_task": 4},
                "filters": TEST_FILTERS,
                "sources": [{"name": "web", "path": str(tmp_path / "web.parquet")}],
            },
        }
        (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
        run = ray_cluster.submit(
            ["python", "-m", "pipelines.curate", "--manifest", str(tmp_path / "m.yaml")]
        )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rejected because" in run.stdout and "succeeded" in run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["rows_in"] == len(cases)
    want = {c.expect for c in cases} - {"kept"}
    assert set(report["by_reason"]) == want
    kept = sum(pq.read_metadata(f).num_rows for f in (out / "samples").glob("*.parquet"))
    assert kept == report["totals"]["kept"] == sum(c.expect == "kept" for c in cases)
