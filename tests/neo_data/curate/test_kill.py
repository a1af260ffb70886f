"""kill -9 at random points of ``neo curate`` then a rerun gives the uninterrupted run's bytes
(tests/neo_data/curate/kill_scenario.py; this is its cheap version: 2 kills, one seed)."""

from __future__ import annotations

import pytest

from tests.neo_data.curate import kill_scenario


@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun_gives_the_same_bytes(ray_local, tmp_path):
    result = kill_scenario.run(tmp_path, kills=2, seed=7, log=lambda line: None, in_process=True)
    assert result["kills"] == 2 and result["rounds"] >= 1
    assert result["differences"] == []
