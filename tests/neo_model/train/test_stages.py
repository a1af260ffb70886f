"""Which parameters each training stage trains."""

from __future__ import annotations

import torch

from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.train.stages import POST_LLM_HW, set_trainable, trainable_names


def test_stage_1_trains_exactly_patch_embedding_pre_buffer_and_post_llm_hw_parts():
    cfg = debug()
    with torch.device("meta"):
        model = NeoChatModel(cfg)
    names = set(trainable_names(model, cfg, "pretrain", "stage"))
    expected = {
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.patch_embedding.bias",
        "vision_model.embeddings.dense_embedding.weight",
        "vision_model.embeddings.dense_embedding.bias",
    }
    for i in range(cfg.num_extra_layers):  # the pre-Buffer, whole
        expected |= {
            n
            for n, _ in model.named_parameters()
            if n.startswith(f"language_model.model.layers.{i}.")
        }
    for i in range(cfg.num_extra_layers, cfg.num_layers):  # post-LLM: H/W q/k and their norms
        expected |= {f"language_model.model.layers.{i}.{part}weight" for part in POST_LLM_HW}
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
