"""Weights: a NEO built on a HF Qwen3 checkpoint, and the released NEO checkpoint layout.

:func:`from_qwen3` applies the initialisation rules that make a fresh NEO start as exactly Qwen3
on text (architecture doc, section 6):

* Qwen3 layer ``i`` becomes NEO layer ``i + num_extra_layers``; embedding, final norm copied;
  ``lm_head`` copied, or the embedding itself when the checkpoint ties them.
* ``q_proj_hw``: per head, the T-query rows of the first and third quarter of the head
  (0..31 and 64..95 for head_dim 128: the highest-frequency rotate-half pairs), concatenated,
  used for H and again for W. ``k_proj_hw`` zeros, so H/W logits start at exactly zero.
  H/W norms one.
* Pre-Buffer layers: every linear N(0, 0.02), every norm one. Patch embedding: PyTorch default.

:func:`save_pretrained` / :func:`from_pretrained` use the released layout: ``config.json``
(``neo_chat``, see :meth:`NeoConfig.to_released`) and safetensors keyed exactly like
``NeoChatModel.state_dict()``, sharded with ``model.safetensors.index.json`` like HF.
:func:`load_for_inference` is what ``neo chat``, ``neo serve`` and the ``neo`` recaption backend
load a checkpoint with: eval mode on a device, and one :class:`CheckpointError` naming the folder
and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from neo_model.config import NeoConfig
from neo_model.model import NeoChatModel, NeoDecoderLayer, NeoRMSNorm

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
LM_HEAD = "language_model.lm_head.weight"
EMBED = "language_model.model.embed_tokens.weight"
INIT_STD = 0.02


def read_safetensors_dir(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a HF-style checkpoint folder (``model.safetensors`` or an index + shards)."""
    path = Path(path)
    if (path / INDEX_NAME).exists():
        weight_map: dict[str, str] = json.loads((path / INDEX_NAME).read_text())["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for file in sorted(set(weight_map.values())):
            tensors.update(load_file(path / file))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(
                f"{path / INDEX_NAME}: {len(missing)} tensors not in any shard: {missing[:5]}"
            )
        return tensors
    if (path / WEIGHTS_NAME).exists():
        return load_file(path / WEIGHTS_NAME)
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} nor {INDEX_NAME}")


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not file.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}")
    return json.loads(file.read_text())


def _empty_model(config: NeoConfig, dtype: torch.dtype) -> NeoChatModel:
    """A model with allocated, uninitialised parameters (no time spent on a throw-away init)."""
    with torch.device("meta"):
        model = NeoChatModel(config).to(dtype)
    model = model.to_empty(device="cpu")
    model.language_model.tie_weights()
    return model


# ---------------------------------------------------------------------------------------------
# From Qwen3
# ---------------------------------------------------------------------------------------------


def hw_query_weight(q_proj: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``q_proj_hw`` initial weight ``[heads * head_dim, hidden]`` from the T ``q_proj`` weight.

    Per head: rows of quarters 1 and 3 (``[0, D/4)`` and ``[D/2, 3D/4)``), concatenated to
    ``D/2`` rows, used for H (first half) and again for W (second half).
    """
    hidden = q_proj.shape[1]
    per_head = q_proj.view(-1, head_dim, hidden)
    first, _, third, _ = per_head.chunk(4, dim=1)
    hw = torch.cat((first, third), dim=1)
    return torch.cat((hw, hw), dim=1).reshape(-1, hidden)


def _qwen3_language_state(
    qwen: dict[str, torch.Tensor], config: NeoConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The full ``language_model`` state dict of a NEO built on Qwen3 tensors ``qwen``."""
    extra = config.num_extra_layers
    state: dict[str, torch.Tensor] = {}
    for key, tensor in qwen.items():
        match = _LAYER_RE.fullmatch(key)
        if match:
            key = f"model.layers.{int(match[1]) + extra}.{match[2]}"
        state[key] = tensor

    if "lm_head.weight" not in state:
        if not config.tie_word_embeddings:
            raise ValueError("Qwen3 checkpoint has no lm_head.weight and does not tie embeddings")
        state["lm_head.weight"] = state["model.embed_tokens.weight"]

    for i in range(extra, config.num_layers):
        attn = f"model.layers.{i}.self_attn"
        q_proj = state.get(f"{attn}.q_proj.weight")
        k_proj = state.get(f"{attn}.k_proj.weight")
        if q_proj is None or k_proj is None:
            raise ValueError(f"Qwen3 checkpoint lacks layer {i - extra} attention weights")
        state[f"{attn}.q_proj_hw.weight"] = hw_query_weight(q_proj, config.head_dim)
        state[f"{attn}.k_proj_hw.weight"] = torch.zeros_like(k_proj)
        for name in ("q_norm_h", "q_norm_w", "k_norm_h", "k_norm_w"):
            state[f"{attn}.{name}.weight"] = torch.ones(config.hw_dim, dtype=q_proj.dtype)

    # Pre-Buffer layers: shapes from a layer on the meta device, linears N(0, 0.02), norms one.
    with torch.device("meta"):
        layer = NeoDecoderLayer(config, 0)
    norms = {f"{name}.weight" for name, m in layer.named_modules() if isinstance(m, NeoRMSNorm)}
    for i in range(extra):
        for name, param in layer.named_parameters():
            if name in norms:
                value = torch.ones(param.shape)
            else:
                value = torch.randn(param.shape, generator=generator) * INIT_STD
            state[f"model.layers.{i}.{name}"] = value
    return state


def from_qwen3(
    path: str | os.PathLike,
    *,
    num_extra_layers: int = 0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **overrides: Any,
) -> NeoChatModel:
    """A fresh NEO on top of a HF Qwen3 checkpoint folder (safetensors + ``config.json``).

    Args:
        path: the Qwen3 checkpoint folder (transformers 4 or 5 ``config.json``).
        num_extra_layers: pre-Buffer layers in front of the Qwen3 stack (12 for NEO-2.2B).
        dtype: parameter dtype of the result.
        seed: seed of the pre-Buffer initialisation.
        overrides: other :class:`NeoConfig` fields (``rope_theta_hw``, ``rope_theta_vision`` ...).
    """
    path = Path(path)
    config = NeoConfig.from_qwen3(_read_config(path), num_extra_layers, **overrides)
    qwen = read_safetensors_dir(path)
    generator = torch.Generator().manual_seed(seed)
    model = _empty_model(config, dtype)
    state = _qwen3_language_state(qwen, config, generator)
    model.language_model.load_state_dict(state, strict=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.vision_model.embeddings.patch_embedding.reset_parameters()
        model.vision_model.embeddings.dense_embedding.reset_parameters()
    return model


# ---------------------------------------------------------------------------------------------
# Released NEO layout
# ---------------------------------------------------------------------------------------------


def save_pretrained(
    model: NeoChatModel, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30
) -> None:
    """Write ``config.json`` and safetensors in the released NEO layout.

    One ``model.safetensors`` when everything fits in ``max_shard_bytes``; otherwise
    ``model-0000i-of-0000n.safetensors`` shards and, written last, ``model.safetensors.index.json``.
    A tied ``lm_head`` is not stored (it is the embedding). Earlier weight files in ``path`` are
    removed first so a reader never mixes two saves.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.iterdir():
        if old.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_RE.fullmatch(old.name):
            old.unlink()

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del state[LM_HEAD]
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = tensor
        shard_bytes += size

    (path / CONFIG_NAME).write_text(json.dumps(model.config.to_released(), indent=2) + "\n")
    if len(shards) == 1:
        save_file(shards[0], path / WEIGHTS_NAME, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def from_pretrained(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> NeoChatModel:
    """Load a NEO checkpoint in the released layout (ours or the official weights)."""
    path = Path(path)
    config = NeoConfig.from_released(_read_config(path))
    state = read_safetensors_dir(path)
    if LM_HEAD not in state and config.tie_word_embeddings and EMBED in state:
        state[LM_HEAD] = state[EMBED]
    model = _empty_model(config, dtype)
    model.load_state_dict(state, strict=True)
    return model


class CheckpointError(ValueError):
    """A directory is not a loadable NEO checkpoint (the message names it and why)."""


def load_for_inference(path: str, device: str) -> tuple[NeoChatModel, dict]:
    """The model (eval mode, on ``device``; bf16 on CUDA) and the raw ``vision_config`` of its
    config.json. Raises :class:`CheckpointError`."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model = from_pretrained(directory, dtype)
        vision = _read_config(directory)["vision_config"]
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint {path}: not a NEO checkpoint ({e})") from e
    return model.to(device).eval(), vision
