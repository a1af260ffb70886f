"""Which parameters each training stage trains."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from pydantic import ValidationError

from neo_data.format.storage import url_to_fs
from neo_data.manifest.train import TrainSpec
from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.train.stages import initial_state, set_trainable, stage_config, trainable_names
from neo_model.weights import from_qwen3
from tests.helpers import stage_1_keys


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head"])
def test_stage_1_trains_exactly_patch_embedding_pre_buffer_and_post_llm_hw_parts(tied):
    cfg = debug().replace(tie_word_embeddings=tied)
    with torch.device("meta"):
        model = NeoChatModel(cfg)
    names = set(trainable_names(model, cfg, "pretrain", "stage"))
    # written out from the architecture doc, not from neo_model.train.stages
    expected, frozen_keys = stage_1_keys(cfg.num_extra_layers, cfg.num_hidden_layers)
    assert {n for n, _ in model.named_parameters(remove_duplicate=False)} == expected | frozen_keys
    assert names == expected
    frozen = {n for n, _ in model.named_parameters()} - names
    assert "language_model.model.embed_tokens.weight" in frozen
    assert "language_model.model.norm.weight" in frozen
    assert f"language_model.model.layers.{cfg.num_extra_layers}.self_attn.q_proj.weight" in frozen
    assert f"language_model.model.layers.{cfg.num_layers - 1}.mlp.down_proj.weight" in frozen
    # stages 2 and 3, and trainable: all, train everything
    everything = {n for n, _ in model.named_parameters()}
    for stage, trainable in (("midtrain", "stage"), ("sft", "stage"), ("pretrain", "all")):
        assert set(trainable_names(model, cfg, stage, trainable)) == everything
    set_trainable(model, cfg, "pretrain", "stage")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert not model.language_model.lm_head.weight.requires_grad  # tied or not, the head stays


def _memory_copy(local: Path, url: str) -> str:
    """``local``'s files under ``url`` on fsspec's in-memory filesystem (an object store: not
    local, so the trainer must read it remotely)."""
    fs, root = url_to_fs(url)
    for f in sorted(local.iterdir()):
        fs.pipe_file(f"{root}/{f.name}", f.read_bytes())
    return url


def test_from_qwen3_the_rope_bases_default_to_the_released_trainings_and_the_manifest_sets_them(
    qwen3_dir,
):
    path, _ = qwen3_dir
    url = _memory_copy(path, f"memory://rope-{path.name}")
    init = {"kind": "qwen3", "path": url, "pre_buffer_layers": 1}
    cfg = stage_config(TrainSpec(init=init, output="x", steps=1))
    # VLMTrainKit/neo/train/argument.py: rope_theta_vision 1000, rope_theta_hw 10000
    assert (cfg.rope_theta_vision, cfg.rope_theta_hw) == (1000.0, 10000.0)
    assert cfg.rope_theta_vision != debug().rope_theta_vision  # not the config class default
    assert cfg.to_released()["vision_config"]["rope_theta_vision"] == 1000.0  # what export writes
    spec = TrainSpec(
        init={**init, "rope_theta_vision": 500, "rope_theta_hw": 20000}, output="x", steps=1
    )
    cfg = stage_config(spec)
    assert (cfg.rope_theta_vision, cfg.rope_theta_hw) == (500.0, 20000.0)
    random = TrainSpec(init={"kind": "random", "rope_theta_hw": 123}, output="x", steps=1)
    cfg = stage_config(random)
    assert (cfg.rope_theta_vision, cfg.rope_theta_hw) == (debug().rope_theta_vision, 123.0)


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ({"kind": "neo", "path": "p", "rope_theta_vision": 1000},
         "init.rope_theta_vision: a neo checkpoint keeps the RoPE base it was trained with"),
        ({"kind": "qwen3", "path": "p", "rope_theta_hw": 0}, "rope_theta_hw\n.*greater than 0"),
        ({"kind": "random", "rope_theta_vision": float("inf")}, "rope_theta_vision\n.*finite"),
    ],
)  # fmt: skip
def test_rope_bases_a_stage_cannot_use_are_refused(init, message):
    with pytest.raises(ValidationError, match=message):
        TrainSpec(init=init, output="x", steps=1)


def test_an_init_on_object_storage_is_read_in_place_and_copied_once_then_removed(
    qwen3_dir, tmp_path, monkeypatch
):
    """Every rank reads ``config.json`` in place; rank 0 copies the checkpoint once for its
    weights, to a temporary directory gone afterwards; the weights equal a local load's."""
    path, _ = qwen3_dir
    url = _memory_copy(path, f"memory://copy-{path.name}")
    gets = []
    real_get = MemoryFileSystem.get
    monkeypatch.setattr(
        MemoryFileSystem, "get", lambda self, *a, **k: gets.append(a) or real_get(self, *a, **k)
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spec = TrainSpec(init={"kind": "qwen3", "path": url, "pre_buffer_layers": 1}, output="x",
                     steps=1, seed=3)  # fmt: skip
    config = stage_config(spec)
    assert gets == []
    state = initial_state(spec, config)
    assert len(gets) == 1 and list(tmp_path.iterdir()) == []
    local = from_qwen3(path, num_extra_layers=1, seed=3, rope_theta_vision=1000.0)
    assert local.config == config
    for (name, a), b in zip(local.state_dict().items(), state.values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="memory://nowhere: no config.json"):
        stage_config(TrainSpec(init={"kind": "neo", "path": "memory://nowhere"}, output="x",
                               steps=1))  # fmt: skip
