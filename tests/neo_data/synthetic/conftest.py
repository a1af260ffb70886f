"""The demo dataset the synthetic-data tests read: written once per session."""

from __future__ import annotations

from typing import Any

import pytest

from neo_data.synthetic.dataset import write_demo_dataset
from tests.neo_data.synthetic.demo_data import COUNTS, ROWS_PER_FILE, read_rows


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("demo")
    paths = write_demo_dataset(str(out), seed=0, rows_per_file=ROWS_PER_FILE, **COUNTS)
    return paths, read_rows(paths)
