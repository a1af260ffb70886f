"""Fixtures of the neo_model tests: the tokenizer, a random debug NEO, tiny Qwen3 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from neo_inputs import tiny_qwen3
from transformers import Qwen3ForCausalLM

from neo_data.tokens import NeoTokenizer, load_tokenizer
from neo_model.config import debug
from neo_model.model import NeoChatModel


@pytest.fixture(scope="session")
def tok() -> NeoTokenizer:
    return load_tokenizer()


@pytest.fixture(scope="session")
def debug_model() -> NeoChatModel:
    """The debug NEO with every parameter random (so no part is a no-op, e.g. zero H/W keys)."""
    torch.manual_seed(0)
    model = NeoChatModel(debug()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm_" in name or "layernorm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session", params=[True, False], ids=["tied", "untied"])
def qwen3_dir(request, tmp_path_factory) -> tuple[Path, Qwen3ForCausalLM]:
    """A saved tiny Qwen3 checkpoint folder and the model it holds."""
    model = tiny_qwen3(tie=request.param)
    path = tmp_path_factory.mktemp(f"qwen3-{request.param_index}")
    model.save_pretrained(path)
    return path, model


TINY_MANIFEST = """
name: tiny
stage: {stage}
data:
  curated: [{curated}]
  packed: {packed}
pack:
  seq_len: 384
  max_image_tokens: 64
  min_pixels: 1024
  max_pixels: 4096
  buckets: [{{name: all, max_image_tokens: 4}}]
  text_ratio: 0.25
  packs_per_shard: 4
"""


@pytest.fixture(scope="session")
def tiny_packed(ray_local, tmp_path_factory) -> str:
    """A small real packed dataset (demo captions, conversations and texts; 384-token packs,
    images of at most 64x64 pixels) for training tests."""
    from neo_data.demo import write_demo_dataset
    from neo_data.manifest import parse_manifest
    from neo_data.pack_job import run_pack

    root = tmp_path_factory.mktemp("tiny-train-data")
    write_demo_dataset(str(root / "curated"), captions=48, conversations=16, texts=24, seed=5)
    manifest = parse_manifest(
        TINY_MANIFEST.format(stage="pretrain", curated=root / "curated", packed=root / "packed"),
        "tiny.yaml",
    )
    result = run_pack(manifest)
    assert result.index["totals"]["packs"] >= 8
    return result.output
