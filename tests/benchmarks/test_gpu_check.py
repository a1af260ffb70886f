"""The prepared GPU check's dry run: the same code on CPU (debug preset) writes its JSON with
every section, and the figures in it hang together."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["device"] == "CPU" and report["preset"] == "debug"
    sections = report["sections"]
    assert set(sections) == {"train_mfu_eager", "train_mfu_compiled", "attention", "vs_hf",
                             "generation", "cuda_tests"}  # fmt: skip
    assert all(s["ok"] for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    for name in ("train_mfu_eager", "train_mfu_compiled"):
        r = sections[name]["result"]
        mfu = r["mfu"]
        # stage 1 freezes most of the post-LLM; the mask sees fewer pairs than plain causal
        assert 0 < mfu["frozen_corrected"] < mfu["mask_aware"] < mfu["standard"], mfu
        assert r["tokens"] == report["seq_len"] and r["step_s"] > 0 and r["image_tokens"] > 0
    assert sections["train_mfu_compiled"]["result"]["compiled"] is False  # compile: CUDA only
    att = sections["attention"]["result"]
    assert att["backward"] is False  # FlexAttention has no backward on CPU
    assert att["neo"]["pairs"] > att["document_causal"]["pairs"] > 0  # image blocks add pairs
    assert att["time_ratio_neo_vs_document"] > 0
    hf = sections["vs_hf"]["result"]
    assert hf["padded_tokens"] >= hf["real_tokens"] > 0 and hf["ratio"] > 0
    gen = sections["generation"]["result"]
    for batch in (1, 8):
        assert gen[f"batch_{batch}"]["tokens_per_s"] > 0, gen
    tests = sections["cuda_tests"]["result"]
    assert "tests/neo_model/test_gpu.py" in tests["files"] and tests["collect_only"]
    assert tests["returncode"] == 0 and "collected" in tests["summary"], tests
    for label in ("MFU frozen_corrected", "NEO / HF (goal 3x)", "batch 8 tokens/s"):
        assert label in run.stdout, run.stdout
