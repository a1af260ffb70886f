"""Which parameters each training stage trains.

Stage 1 (pre-training) trains what is new in NEO and leaves the Qwen3 language model as it was:

* the patch embedding (``vision_model.*``),
* every pre-Buffer layer (``language_model.model.layers.{i}.*`` for ``i < num_extra_layers``),
* in every post-LLM layer, the H/W query/key projections and their norms
  (``self_attn.{q,k}_proj_hw`` and ``self_attn.{q,k}_norm_{h,w}``).

Everything else (token embedding / tied head, the post-LLM's Qwen3 weights, the final norm) is
frozen. Stages 2 and 3 train every parameter. (The released code's freezing helper is never called
and would not select the pre-Buffer layers; this list implements the paper's intent.)
"""

from __future__ import annotations

import re

from torch import nn

from neo_model.config import NeoConfig

POST_LLM_HW = (
    "self_attn.q_proj_hw.",
    "self_attn.k_proj_hw.",
    "self_attn.q_norm_h.",
    "self_attn.q_norm_w.",
    "self_attn.k_norm_h.",
    "self_attn.k_norm_w.",
)
_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.(.+)$")


def trains_in_stage_1(name: str, config: NeoConfig) -> bool:
    """Whether parameter ``name`` (a checkpoint key) is trained in pre-training."""
    if name.startswith("vision_model."):
        return True
    m = _LAYER.match(name)
    if m is None:
        return False
    layer, rest = int(m.group(1)), m.group(2) + "."
    if layer < config.num_extra_layers:
        return True
    return rest.startswith(POST_LLM_HW)


def trainable_names(model: nn.Module, config: NeoConfig, stage: str, trainable: str) -> list[str]:
    """Names of the parameters a stage trains (``trainable``: ``"stage"`` or ``"all"``)."""
    names = [n for n, _ in model.named_parameters()]
    if trainable == "all" or stage != "pretrain":
        return names
    return [n for n in names if trains_in_stage_1(n, config)]


def set_trainable(model: nn.Module, config: NeoConfig, stage: str, trainable: str) -> list[str]:
    """Set ``requires_grad`` for a stage; returns the trained names."""
    keep = set(trainable_names(model, config, stage, trainable))
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
    return sorted(keep)
