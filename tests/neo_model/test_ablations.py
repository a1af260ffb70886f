"""The paper's Table 3 switches: ``rope: 1d`` (images as a text run) and ``attention: causal``.

Each variant is checked on a small pack of two samples against the rule written out by hand
(1D: T is the token's index in its sample, H = W = 0; causal: no token sees a later one), and the
checkpoint records the choice.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from neo_data.encoding.tokens import IMG_CONTEXT_ID
from neo_data.manifest.train import TrainSpec
from neo_model.attention import sample_ids_from_cu_seqlens
from neo_model.cache import KVCache
from neo_model.config import NeoConfig, debug
from neo_model.model import NeoChatModel
from neo_model.rope import text_run_positions
from neo_model.train.stages import stage_config
from neo_model.weights import from_pretrained, save_pretrained
from tests.neo_model.neo_inputs import make_pack, make_sample

GRIDS = ([(2, 2)], [(1, 3)])  # one image per sample: 2x2, then 1x3


@pytest.fixture(scope="module")
def pack(tok):
    samples = [
        make_sample(tok, [("user", "<image>\nWhat is it?"), ("assistant", "A star.")], GRIDS[0]),
        make_sample(tok, [("user", "<image>\nColour?"), ("assistant", "Red.")], GRIDS[1]),
    ]
    out = make_pack(samples)
    out["sample_ids"] = sample_ids_from_cu_seqlens(out.pop("cu_seqlens"), out["t_index"].shape[1])[
        None
    ]
    out["lengths"] = [len(s.input_ids) for s in samples]
    return out


def variant(model: NeoChatModel, **changes) -> NeoChatModel:
    other = NeoChatModel(dataclasses.replace(model.config, **changes)).eval()
    other.load_state_dict(model.state_dict())
    return other


def images(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 64, 64, generator=g), torch.randn(3, 32, 96, generator=g)]


def run(model, pack, t, h, w, pixel_values=None) -> torch.Tensor:
    with torch.no_grad():
        return model(pack["input_ids"], t, h, w, pack["image_ordinal"],
                     sample_ids=pack["sample_ids"],
                     pixel_values=pixel_values or images()).logits[0]  # fmt: skip


def test_1d_positions_are_each_tokens_index_in_its_sample_with_h_w_zero(pack):
    native_t = pack["t_index"]
    # the native rule gives one T per image: fewer distinct T than tokens
    assert native_t.max() < max(pack["lengths"]) - 1
    t, h, w = text_run_positions(native_t, pack["sample_ids"], pack["image_ordinal"])
    expected = np.concatenate([np.arange(n) for n in pack["lengths"]])
    assert t[0].tolist() == expected.tolist()
    assert not h.any() and not w.any()


def test_1d_positions_continue_the_run_after_a_kv_cache(pack):
    """Decoding passes the cache's history: the next token's T is one past the prompt's last."""
    n = pack["lengths"][0]
    ids, ordinal = pack["sample_ids"][:, :n], pack["image_ordinal"][:, :n]
    t_next = pack["t_index"][:, n - 1 : n] + 1  # what generation passes (native next_t)
    history_ids = torch.cat((ids, torch.zeros(1, 1, dtype=ids.dtype)), dim=1)
    history_ord = torch.cat((ordinal, torch.full((1, 1), -1, dtype=ordinal.dtype)), dim=1)
    t, _, _ = text_run_positions(t_next, history_ids, history_ord)
    assert t.tolist() == [[n]]


def test_1d_model_equals_native_model_given_text_run_positions(debug_model, pack):
    one_d = variant(debug_model, rope="1d")
    t = torch.from_numpy(np.concatenate([np.arange(n) for n in pack["lengths"]]))[None]
    zeros = torch.zeros_like(t)
    got = run(one_d, pack, pack["t_index"], pack["h_index"], pack["w_index"])
    torch.testing.assert_close(got, run(debug_model, pack, t, zeros, zeros))
    # the native model reads the grid: the same positions give other logits there
    assert (
        run(debug_model, pack, pack["t_index"], pack["h_index"], pack["w_index"]) - got
    ).abs().max() > 1e-4
    # and 1d ignores H/W: swapping them changes nothing
    swapped = run(one_d, pack, pack["t_index"], pack["w_index"], pack["h_index"])
    torch.testing.assert_close(swapped, got)


def test_causal_attention_hides_later_image_tokens(debug_model, pack):
    """Under mixed attention the first image token sees the rest of its image; under causal it
    does not: changing the image's last tokens moves only the mixed model's first-token output."""
    is_image = (pack["input_ids"][0] == IMG_CONTEXT_ID).nonzero().flatten()
    first = int(is_image[0])
    changed = images()
    changed[0] = changed[0].clone()
    changed[0][:, 32:, :] += 3.0  # the bottom row of the 2x2 grid: image tokens 3 and 4
    causal = variant(debug_model, attention="causal")
    thw = pack["t_index"], pack["h_index"], pack["w_index"]
    for model, moves in ((debug_model, True), (causal, False)):
        a = run(model, pack, *thw)[first]
        b = run(model, pack, *thw, pixel_values=changed)[first]
        assert bool((a - b).abs().max() > 1e-5) is moves
    # causal equals the mixed model told that no token is an image (plain causal within samples)
    no_images = dict(pack, image_ordinal=torch.full_like(pack["image_ordinal"], -1))
    torch.testing.assert_close(run(causal, pack, *thw), run(debug_model, no_images, *thw))


def test_1d_generation_matches_a_full_forward(debug_model, pack):
    """Prefill + one cached decode step gives the logits of one forward over the whole row."""
    one_d = variant(debug_model, rope="1d", attention="causal")
    n = pack["lengths"][0]
    cols = {k: pack[k][:, :n] for k in ("input_ids", "t_index", "h_index", "w_index",
                                         "image_ordinal", "sample_ids")}  # fmt: skip
    pix = images()[:1]
    with torch.no_grad():
        full = one_d(*(cols[k] for k in ("input_ids", "t_index", "h_index", "w_index",
                                         "image_ordinal")), sample_ids=cols["sample_ids"],
                     pixel_values=pix).logits[0, -1]  # fmt: skip
        cache = KVCache()
        cut = {k: v[:, : n - 1] for k, v in cols.items()}
        one_d(*(cut[k] for k in ("input_ids", "t_index", "h_index", "w_index", "image_ordinal")),
              sample_ids=cut["sample_ids"], pixel_values=pix, cache=cache)  # fmt: skip
        last = {k: v[:, n - 1 :] for k, v in cols.items()}
        step = one_d(*(last[k] for k in ("input_ids", "t_index", "h_index", "w_index",
                                         "image_ordinal")), sample_ids=last["sample_ids"],
                     cache=cache).logits[0, -1]  # fmt: skip
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "rope,attention", [("1d", "mixed"), ("native", "causal"), ("1d", "causal")]
)
def test_checkpoint_records_the_variant(tmp_path, rope, attention):
    config = debug().replace(rope=rope, attention=attention)
    assert NeoConfig.from_released(config.to_released()) == config
    save_pretrained(NeoChatModel(config), tmp_path)
    loaded = from_pretrained(tmp_path)
    assert (loaded.config.rope, loaded.config.attention) == (rope, attention)


def test_released_configs_without_the_fields_are_native_mixed():
    released = debug().to_released()
    for key in ("rope_mode", "attention_mode"):
        del released["llm_config"][key]
    config = NeoConfig.from_released(released)
    assert (config.rope, config.attention) == ("native", "mixed")


def test_bad_switch_names_the_field():
    with pytest.raises(ValueError, match="NeoConfig.rope = '2d'"):
        debug().replace(rope="2d")


def test_train_manifest_switch_overrides_the_init_checkpoints_choice(tmp_path):
    save_pretrained(NeoChatModel(debug().replace(rope="1d")), tmp_path)
    init = {"kind": "neo", "path": str(tmp_path)}
    inherit = TrainSpec(init=init, output=str(tmp_path / "o"), steps=1)
    assert (stage_config(inherit).rope, stage_config(inherit).attention) == ("1d", "mixed")
    forced = TrainSpec(init=init, output=str(tmp_path / "o"), steps=1, rope="native",
                       attention="causal")  # fmt: skip
    assert (stage_config(forced).rope, stage_config(forced).attention) == ("native", "causal")
