"""Model FLOPs of a training step (MFU), against the formula worked out by hand for the debug
model: its layer shapes, a two-sample pack with two images."""

from __future__ import annotations

import torch

from neo_model.config import debug
from neo_model.model import NeoChatModel
from neo_model.train.flops import FlopCount
from neo_model.train.stages import set_trainable


def test_flops_of_a_pack_count_dense_patch_and_attention_terms():
    cfg = debug()
    with torch.device("meta"):
        model = NeoChatModel(cfg)
    set_trainable(model, cfg, "pretrain", "stage")
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    # per layer: q, k, v, o, q_hw, k_hw projections and the SwiGLU MLP's three matrices
    layer = h * q + h * kv + h * kv + q * h + h * q + h * kv + 3 * h * f
    head = cfg.vocab_size * h  # tied to the embedding: counted once, as the head
    dense = cfg.num_layers * layer + head
    # stage 1 trains the pre-Buffer's matrices and the post-LLM's q_hw and k_hw
    trainable = cfg.num_extra_layers * layer + cfg.num_hidden_layers * (h * q + h * kv)
    # per image token: conv1 (3 x 16 x 16 -> vision_hidden) on downsample^2 patches, conv2 once
    conv1 = 3 * cfg.patch_size**2 * cfg.vision_hidden
    patch = conv1 * cfg.downsample**2 + cfg.vision_hidden * h * cfg.downsample**2
    attn = cfg.num_layers * cfg.num_attention_heads * (2 * d + d)  # q.k over T|H|W, p.v
    assert FlopCount.of(model, cfg) == FlopCount(dense, trainable, patch, attn)

    samples, images = [10, 20], [4, 6]  # 30 tokens, 10 of them image tokens
    tokens, image_tokens = 30, 10
    causal = 30 * 31 // 2
    neo = 10 * 11 // 2 + 20 * 21 // 2 + 4 * 3 // 2 + 6 * 5 // 2  # + each image's upper triangle
    assert FlopCount.of(model, cfg).step(samples, images) == {
        "standard": 6 * dense * tokens + 6 * patch * image_tokens + 6 * attn * causal,
        "mask_aware": 6 * dense * tokens + 6 * patch * image_tokens + 6 * attn * neo,
        "frozen_corrected": (4 * dense + 2 * trainable) * tokens
        + 6 * patch * image_tokens
        + 6 * attn * neo,
    }
