"""What the synthetic-data tests share: the demo dataset's test counts and readers of its rows."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq

from neo_data.synthetic.scenes import Scene

COUNTS = {"captions": 40, "conversations": 60, "texts": 20}
ROWS_PER_FILE = 16


def read_rows(paths: list[str]) -> list[dict[str, Any]]:
    return [row for path in paths for row in pq.read_table(path).to_pylist()]


def of_kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == kind]


def scenes_of(row: dict[str, Any], key: str = "scenes") -> list[Scene]:
    """The scenes of a row's images (``scenes``) or of a text's paragraphs (``described_scenes``)."""
    return [Scene.from_meta(m) for m in json.loads(row["meta"]).get(key, [])]
