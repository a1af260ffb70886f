"""Kill -9 during ``neo recaption`` and rerun: the output is byte-identical to an uninterrupted
run (the short version of ``python -m tests.neo_data.recaption.kill_scenario --kills 20``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_recaption_killed_twice_then_rerun_equals_an_uninterrupted_run(tmp_path):
    cmd = [sys.executable, "-m", "tests.neo_data.recaption.kill_scenario", "--kills", "2",
           "--seed", "1", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["problems"] == [] and result["rounds"] >= 1
    assert sum(r["ended"] == "killed" for r in result["kills"]) >= 2
    assert not list((tmp_path / "recaptioned").rglob("*.tmp-*"))
