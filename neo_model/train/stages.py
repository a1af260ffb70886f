"""A training stage's model: where it starts (``train.init``), which parameters it trains, and
the model built on every rank from the two.

Stage 1 (pre-training) trains what is new in NEO and leaves the Qwen3 language model as it was:

* the patch embedding (``vision_model.*``),
* every pre-Buffer layer (``language_model.model.layers.{i}.*`` for ``i < num_extra_layers``),
* in every post-LLM layer, the H/W query/key projections and their norms
  (``self_attn.{q,k}_proj_hw`` and ``self_attn.{q,k}_norm_{h,w}``).

Everything else (token embedding / tied head, the post-LLM's Qwen3 weights, the final norm) is
frozen. Stages 2 and 3 train every parameter. (The released code's freezing helper is never called
and would not select the pre-Buffer layers; this list implements the paper's intent.)

The starting weights are random (a ``preset``), a Qwen3 checkpoint widened to NEO (``qwen3``)
or an exported NEO checkpoint (``neo``, the previous stage's export). :func:`build_stage_model`
builds the model on the meta device, applies the trainable set and the parallel layout
(``neo_model.train.parallelize``), then materialises it and broadcasts rank 0's starting weights.
"""

from __future__ import annotations

import json
import re

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from neo_data.format.storage import join, url_to_fs
from neo_data.manifest.train import TrainSpec
from neo_model import config as presets
from neo_model.config import NeoConfig
from neo_model.model import NeoChatModel
from neo_model.train.checkpoint import local_dir
from neo_model.train.parallelize import Env, parallelize
from neo_model.weights import CONFIG_NAME, from_pretrained, from_qwen3

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


def stage_config(spec: TrainSpec) -> NeoConfig:
    """The stage's model config: the ``random`` preset's, or built from ``init.path``'s
    ``config.json`` (read in place, local or ``s3://``: every rank reads it, nothing is copied);
    with the RoPE bases ``train.init`` sets (``InitSpec.rope_overrides``) and the manifest's
    ablation switches (``train.rope``, ``train.attention``) where set."""
    init = spec.init
    rope = init.rope_overrides()
    if init.kind == "random":
        config = getattr(presets, init.preset)().replace(**rope)
    elif init.kind == "qwen3":
        config = NeoConfig.from_qwen3(read_config_json(init.path), init.pre_buffer_layers, **rope)
    else:
        config = NeoConfig.from_released(read_config_json(init.path))
    return config.replace(
        rope=spec.rope or config.rope, attention=spec.attention or config.attention
    )


def read_config_json(url: str) -> dict:
    """``<url>/config.json`` of a checkpoint directory (local path or ``s3://``)."""
    fs, root = url_to_fs(url)
    path = join(root, CONFIG_NAME)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"train.init.path {url}: no {CONFIG_NAME} (expected a checkpoint directory)"
        )
    return json.loads(fs.cat_file(path))


def initial_state(spec: TrainSpec, config: NeoConfig) -> dict[str, torch.Tensor]:
    """Rank 0's full starting weights (fp32, CPU). A checkpoint on object storage is copied
    once, to a temporary directory removed when its weights are read."""
    init = spec.init
    if init.kind == "random":
        torch.manual_seed(spec.seed)
        return NeoChatModel(config).state_dict()
    with local_dir(init.path) as local:
        if init.kind == "qwen3":
            model = from_qwen3(
                local, num_extra_layers=init.pre_buffer_layers, seed=spec.seed,
                **init.rope_overrides(),
            )  # fmt: skip
        else:
            model = from_pretrained(local)
        return model.state_dict()


def build_stage_model(
    spec: TrainSpec, stage: str, env: Env
) -> tuple[NeoChatModel, NeoConfig, list[str]]:
    """Meta-device model -> stage trainable set -> FSDP2 per layer -> materialised -> weights
    broadcast from rank 0. Returns the model, its config and the trained parameter names."""
    config = stage_config(spec)
    with torch.device("meta"):
        model = NeoChatModel(config)
    trained = set_trainable(model, config, stage, spec.trainable)
    parallelize(model, spec, env)
    model.to_empty(device=env.device)
    full = initial_state(spec, config) if env.rank == 0 else {}
    set_model_state_dict(
        model,
        full,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False),
    )
    return model, config, trained
