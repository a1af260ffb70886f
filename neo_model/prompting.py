"""Prompts for a NEO checkpoint, prepared exactly like training data.

One home for what ``neo chat``, ``neo serve`` and the ``neo`` recaption backend share: the
packer's smart resize (factor 32) and Pillow bicubic resize, ImageNet normalisation, and the
``neo1_0`` template through :func:`neo_data.encoding.tokens.render_turns`; the pixel budget of a
checkpoint; loading a checkpoint with errors that name what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from neo_data.encoding.images import FACTOR, resize_to_target
from neo_data.encoding.tokens import NeoTokenizer, render_turns
from neo_data.format.schema import IMAGE_PLACEHOLDER
from neo_model.model import NeoChatModel, normalize_image
from neo_model.weights import CONFIG_NAME, from_pretrained

# Without a pixel budget in the checkpoint: 1,280 .. 4,096 image tokens (how the released SFT
# models are evaluated).
DEFAULT_MIN_PIXELS = 1280 * FACTOR * FACTOR
DEFAULT_MAX_PIXELS = 4096 * FACTOR * FACTOR
MAX_DECODE_PIXELS = 178_956_970  # the packer's default decode cap


class CheckpointError(ValueError):
    """A directory is not a loadable NEO checkpoint (the message names it and why)."""


def build_prompt(
    tok: NeoTokenizer,
    turns: Sequence[tuple[str, str]],
    images: Sequence[Image.Image],
    min_pixels: int,
    max_pixels: int,
    placeholder: str = IMAGE_PLACEHOLDER,
) -> tuple[np.ndarray, list[tuple[int, int]], list[torch.Tensor]]:
    """Token ids (ending with ``<|im_start|>assistant\\n``), image grids and pixel tensors.

    ``images`` are decoded RGB images, one per ``placeholder`` in ``turns``, in order (a server
    passes a placeholder no user text can contain). Raises ``ImageRejected`` (smart resize) or
    ``TemplateError`` (placeholders != images).
    """
    pixels, grids = [], []
    for image in images:
        resized = resize_to_target(image, min_pixels, max_pixels)
        pixels.append(normalize_image(resized))
        grids.append((resized.height // FACTOR, resized.width // FACTOR))
    rendered = render_turns(tok, turns, grids, add_generation_prompt=True, placeholder=placeholder)
    return rendered.input_ids, grids, pixels


def load_checkpoint(path: str, device: str) -> tuple[NeoChatModel, dict]:
    """The model (eval mode, on ``device``; bf16 on CUDA) and the raw ``vision_config`` of its
    config.json. Raises :class:`CheckpointError`."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model = from_pretrained(directory, dtype)
        vision = json.loads((directory / CONFIG_NAME).read_text())["vision_config"]
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint {path}: not a NEO checkpoint ({e})") from e
    return model.to(device).eval(), vision


def pixel_budget(
    model: NeoChatModel,
    vision: dict,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """The explicit budget, else the checkpoint's ``vision_config`` one, else the default."""
    if min_pixels is None:
        min_pixels = model.config.min_pixels if "min_pixels" in vision else DEFAULT_MIN_PIXELS
    if max_pixels is None:
        max_pixels = model.config.max_pixels if "max_pixels" in vision else DEFAULT_MAX_PIXELS
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"pixel budget {min_pixels}..{max_pixels}: need 0 < min <= max")
    return min_pixels, max_pixels
