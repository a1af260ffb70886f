"""Fixtures of the neo_model tests: the tokenizer, a random debug NEO, tiny Qwen3 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen3ForCausalLM

from neo_data.encoding.tokens import NeoTokenizer, load_tokenizer
from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.testing import tiny_qwen3


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
