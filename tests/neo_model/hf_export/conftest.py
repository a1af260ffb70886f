"""Fixtures of the Hugging Face export tests: a random debug NEO exported as a HF folder, and
what loads it back through the Auto classes (remote code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neo_model.config import debug
from neo_model.hf_export import write_hf_extras
from neo_model.model import NeoChatModel
from neo_model.weights import save_pretrained


@pytest.fixture(scope="session")
def neo() -> NeoChatModel:
    """The debug NEO with every weight random and large, so no part is a no-op (zero H/W keys,
    unit norms) and a wrong position or mask changes the logits."""
    torch.manual_seed(0)
    model = NeoChatModel(debug()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
            elif p.ndim == 2:
                p.mul_(3)
    return model


@pytest.fixture(scope="session")
def export_dir(neo, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf-export")
    save_pretrained(neo, path)
    write_hf_extras(path, neo.config)
    return path


@pytest.fixture(scope="session")
def hf_model(export_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(export_dir, trust_remote_code=True).eval()


@pytest.fixture(scope="session")
def hf_tokenizer(export_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True, use_fast=False)


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A noise image whose size is not a multiple of 32 (smart resize has work to do)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8))
