"""A stage's export and ``neo export`` give complete Hugging Face folders: ``AutoModel`` with
remote code loads them with every weight in place and gives neo_model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import load_tokenizer, user_content
from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.prompting import build_prompt
from neo_model.testing import tiny_qwen3
from neo_model.train.checkpoint import FsspecStore, export, save_train_state
from neo_model.train.parallelize import Env
from neo_model.weights import from_pretrained, from_qwen3, save_pretrained
from pipelines.export import main as neo_export
from tests.helpers import image_bytes

STAGE1_PIXELS = (65_536, 4_194_304)  # the pre-training budget


def _hf_logits_match(folder: Path, model: NeoChatModel) -> None:
    """AutoModel (remote code) from ``folder`` has exactly ``model``'s weights and logits."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    hf = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    ours = model.state_dict()
    theirs = hf.state_dict()
    assert set(theirs) == set(ours)
    for name, tensor in ours.items():
        assert torch.equal(theirs[name], tensor), name
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert (processor.min_pixels, processor.max_pixels) == (
        model.config.min_pixels, model.config.max_pixels,
    )  # fmt: skip
    image = Image.open(__import__("io").BytesIO(image_bytes(300, 200, color=(10, 200, 90))))
    c = model.config
    turns = [("user", user_content("Describe it.", 1))]
    ids, grids, pixels = build_prompt(load_tokenizer(), turns, [image], c.min_pixels, c.max_pixels)
    t, h, w, ordinal = thw_indices(np.asarray(ids), grids)
    cols = [torch.as_tensor(np.asarray(x, dtype=np.int64))[None] for x in (ids, t, h, w, ordinal)]
    feats = processor(image)
    with torch.no_grad():
        expected = model(*cols, pixel_values=pixels, backend="sdpa").logits
        got = hf(cols[0], pixel_values=feats["pixel_values"], grid_hw=feats["grid_hw"]).logits
    assert (got - expected).abs().max().item() <= 1e-5


def test_a_stage_1_export_from_qwen3_loads_with_auto_model(one_rank_group, tmp_path):
    """Stage 1 starts from Qwen3 (here untied, as NEO-9B): its export, written by the
    trainer's export(), is a HF folder whose remote model equals neo_model's."""
    qwen = tiny_qwen3(tie=False)
    qwen.save_pretrained(tmp_path / "qwen3")
    model = from_qwen3(tmp_path / "qwen3", num_extra_layers=1, seed=0).eval()
    config = model.config.replace(min_pixels=STAGE1_PIXELS[0], max_pixels=STAGE1_PIXELS[1])
    export(model, config, str(tmp_path / "export"), rank=0)
    folder = tmp_path / "export"
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"]
    _hf_logits_match(folder, from_pretrained(folder).eval())
    assert not config.tie_word_embeddings


def test_neo_export_writes_a_training_checkpoint_as_a_hf_folder(tmp_path, capsys):
    torch.manual_seed(3)
    model = NeoChatModel(debug()).eval()
    opt = torch.optim.AdamW(model.parameters())
    store = FsspecStore(str(tmp_path / "checkpoints"), rank=0, world_size=1, keep=1)
    env = Env(rank=0, world_size=1, device=torch.device("cpu"), under_ray=False)
    save_train_state(model, opt, 4, 4, env, store, {"step": 4})
    store.close()
    checkpoint = tmp_path / "checkpoints" / "step-00000004"
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        "name: tiny\nstage: pretrain\ndata: {curated: [unused], packed: unused}\n"
        "pack: {max_pixels: 4096, min_pixels: 1024, buckets: [{name: all, max_image_tokens: 4}]}\n"
        "train: {init: {kind: random, preset: debug}, output: unused, steps: 4}\n"
    )
    # a training checkpoint needs the run's manifest for its config
    assert neo_export([str(checkpoint), str(tmp_path / "hf")]) == 2
    assert "pass the run's manifest (--manifest)" in capsys.readouterr().err

    assert neo_export([str(checkpoint), str(tmp_path / "hf"), "--manifest", str(manifest)]) == 0
    folder = tmp_path / "hf"
    exported = from_pretrained(folder).eval()
    assert (exported.config.min_pixels, exported.config.max_pixels) == (1024, 4096)
    for name, tensor in model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor), name
    _hf_logits_match(folder, exported)

    # an export without the HF extras (an older neo export) gets them, weights unchanged
    save_pretrained(exported, tmp_path / "old")
    assert not (tmp_path / "old" / "modeling_neo_chat.py").exists()
    assert neo_export([str(tmp_path / "old"), str(tmp_path / "hf2")]) == 0
    assert (tmp_path / "hf2" / "modeling_neo_chat.py").exists()
    assert neo_export([str(tmp_path / "nowhere"), str(tmp_path / "hf3")]) == 2
    assert "neither an export (config.json) nor a training checkpoint" in capsys.readouterr().err
