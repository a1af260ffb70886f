"""NEO built from Qwen3 equals Qwen3 on text; checkpoints round-trip in the released layout."""

from __future__ import annotations

import json

import pytest
import torch

from neo_model.attention import build_mask
from neo_model.config import NeoConfig, debug
from neo_model.model import NeoChatModel
from neo_model.rope import NativeRope
from neo_model.weights import (
    INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    from_pretrained,
    from_qwen3,
    hw_query_weight,
    load_for_inference,
    save_pretrained,
)
from tests.neo_model.neo_inputs import make_pack, make_sample, model_inputs

TURNS = [
    ("system", "You are a helpful assistant."),
    ("user", "What is the capital of France? Answer in one word."),
    ("assistant", "Paris."),
]


def test_from_qwen3_without_pre_buffer_gives_qwen3_logits(qwen3_dir, tok):
    path, qwen = qwen3_dir
    neo = from_qwen3(path, num_extra_layers=0).eval()
    pack = make_pack([make_sample(tok, TURNS)])
    assert torch.equal(pack["t_index"][0], torch.arange(pack["t_index"].shape[1]))
    with torch.no_grad():
        ours = neo(*model_inputs(pack)).logits
        theirs = qwen(pack["input_ids"]).logits
    torch.testing.assert_close(ours, theirs)


def test_from_qwen3_config_fields(qwen3_dir):
    path, qwen = qwen3_dir
    neo = from_qwen3(path, num_extra_layers=3, rope_theta_vision=1000.0)
    cfg = neo.config
    assert (cfg.num_hidden_layers, cfg.num_extra_layers, cfg.num_layers) == (2, 3, 5)
    assert cfg.rope_theta == 1_000_000.0 and cfg.rope_theta_vision == 1000.0
    assert cfg.tie_word_embeddings == qwen.config.tie_word_embeddings
    lm = neo.language_model
    assert (lm.lm_head.weight is lm.model.embed_tokens.weight) == cfg.tie_word_embeddings
    torch.testing.assert_close(lm.lm_head.weight, qwen.lm_head.weight, rtol=0, atol=0)


def test_post_llm_layers_reproduce_qwen3_behind_a_pre_buffer(qwen3_dir, tok):
    """Fed the same hidden states, NEO's post-LLM layers + norm + head give Qwen3's logits."""
    path, qwen = qwen3_dir
    extra = 2
    neo = from_qwen3(path, num_extra_layers=extra).eval()
    pack = make_pack([make_sample(tok, TURNS)])
    ids, t, h, w, ordinal = model_inputs(pack)
    hidden = torch.randn(1, ids.shape[1], neo.config.hidden_size)
    with torch.no_grad():
        rope = NativeRope.build(neo.config, t, h, w)
        mask = build_mask(torch.zeros_like(ids), ordinal, "sdpa")
        x = hidden
        for layer in neo.language_model.model.layers[extra:]:
            x = layer(x, rope, mask)
        ours = neo.language_model.lm_head(neo.language_model.model.norm(x))
        theirs = qwen(inputs_embeds=hidden).logits
    torch.testing.assert_close(ours, theirs)


def test_init_rules(qwen3_dir):
    path, qwen = qwen3_dir
    extra = 2
    neo = from_qwen3(path, num_extra_layers=extra)
    layers = neo.language_model.model.layers
    for i, qwen_layer in enumerate(qwen.model.layers):
        attn, qwen_attn = layers[i + extra].self_attn, qwen_layer.self_attn
        assert torch.equal(attn.q_proj.weight, qwen_attn.q_proj.weight)
        assert torch.equal(attn.k_norm.weight, qwen_attn.k_norm.weight)
        assert torch.equal(attn.k_proj_hw.weight, torch.zeros_like(attn.k_proj_hw.weight))
        q = qwen_attn.q_proj.weight.view(4, 128, -1)
        hw = attn.q_proj_hw.weight.view(4, 128, -1)
        rows = torch.cat((q[:, 0:32], q[:, 64:96]), dim=1)  # the doc's rows 0..31 and 64..95
        assert torch.equal(hw[:, :64], rows) and torch.equal(hw[:, 64:], rows)
        for norm in (attn.q_norm_h, attn.q_norm_w, attn.k_norm_h, attn.k_norm_w):
            assert torch.equal(norm.weight, torch.ones(64))
    for layer in layers[:extra]:
        for name, p in layer.named_parameters():
            if "norm" in name:
                assert torch.equal(p, torch.ones_like(p)), name
            else:
                assert abs(p.std().item() - 0.02) < 0.004 and abs(p.mean().item()) < 0.002, name


def test_hw_query_weight_generalises_by_quarters():
    q = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2 * 8, 3)
    hw = hw_query_weight(q, head_dim=8).view(2, 8, 3)
    per_head = q.view(2, 8, 3)
    expect = torch.cat((per_head[:, 0:2], per_head[:, 4:6]), dim=1)
    assert torch.equal(hw[:, :4], expect) and torch.equal(hw[:, 4:], expect)


@pytest.mark.parametrize("max_shard_bytes", [2**40, 2**20], ids=["single", "sharded"])
def test_save_load_round_trip_is_bit_exact(tmp_path, max_shard_bytes, debug_model, tok):
    save_pretrained(debug_model, tmp_path, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / INDEX_NAME).exists()
    assert sharded == (max_shard_bytes == 2**20)
    assert (tmp_path / WEIGHTS_NAME).exists() != sharded
    loaded = from_pretrained(tmp_path)
    assert loaded.config == debug_model.config
    ours, theirs = debug_model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    lm = loaded.language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # still tied after loading
    pack = make_pack([make_sample(tok, TURNS)])
    with torch.no_grad():
        assert torch.equal(
            debug_model(*model_inputs(pack)).logits, loaded(*model_inputs(pack)).logits
        )


def test_saved_layout_matches_the_released_checkpoint(tmp_path, debug_model):
    save_pretrained(debug_model, tmp_path, max_shard_bytes=2**20)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "neo_chat" and config["template"] == "neo1_0"
    llm, vision = config["llm_config"], config["vision_config"]
    assert llm["num_hidden_layers"] == 4 and llm["extra_num_layers"] == 2
    assert llm["rope_theta_hw"] == 10_000.0 and "max_position_embeddings_hw" in llm
    assert vision["downsample_ratio"] == 0.5 and vision["llm_hidden_size"] == 64
    keys = set(json.loads((tmp_path / INDEX_NAME).read_text())["weight_map"])
    for key in (
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.patch_embedding.bias",
        "vision_model.embeddings.dense_embedding.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.3.self_attn.q_proj_hw.weight",
        "language_model.model.layers.3.self_attn.k_norm_w.weight",
        "language_model.model.layers.3.mlp.down_proj.weight",
        "language_model.model.layers.3.post_attention_layernorm.weight",
        "language_model.model.norm.weight",
    ):
        assert key in keys
    assert "language_model.lm_head.weight" not in keys  # tied: stored once, as the embedding


def test_released_config_accepts_one_element_lists():
    released = debug().to_released()
    released["vision_config"]["downsample_ratio"] = [0.5]
    released["vision_config"]["llm_hidden_size"] = [64]
    assert NeoConfig.from_released(released) == debug()
    released["vision_config"]["llm_hidden_size"] = [32]
    with pytest.raises(ValueError, match="llm_hidden_size"):
        NeoConfig.from_released(released)


def test_load_rejects_a_wrong_checkpoint(tmp_path, debug_model):
    save_pretrained(debug_model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["llm_config"]["num_hidden_layers"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="layers.4"):
        from_pretrained(tmp_path)


def test_fresh_model_state_dict_has_released_names():
    model = NeoChatModel(debug())
    names = set(model.state_dict())
    attn = "language_model.model.layers.0.self_attn"
    expected = {f"{attn}.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_proj_hw",
                                                 "k_proj_hw", "q_norm", "k_norm", "q_norm_h",
                                                 "q_norm_w", "k_norm_h", "k_norm_w")}  # fmt: skip
    assert expected <= names
    assert "language_model.lm_head.weight" in names
    per_layer = {n.split("layers.0.")[1] for n in names if ".layers.0." in n}
    assert len(per_layer) == 12 + 3 + 2  # attention, MLP, two layer norms


def test_load_for_inference_gives_the_saved_model_in_fp32_eval_mode_on_cpu(tmp_path, debug_model):
    save_pretrained(debug_model, tmp_path)
    model, vision = load_for_inference(str(tmp_path), "cpu")
    assert not model.training
    assert vision == debug_model.config.to_released()["vision_config"]
    saved = debug_model.state_dict()
    for key, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, saved[key]), key
    with pytest.raises(CheckpointError, match="no such directory"):
        load_for_inference(str(tmp_path / "missing"), "cpu")
