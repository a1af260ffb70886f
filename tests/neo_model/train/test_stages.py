"""Which parameters each training stage trains."""

from __future__ import annotations

import pytest
import torch

from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.train.stages import set_trainable, trainable_names
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
