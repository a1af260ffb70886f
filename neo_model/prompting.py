"""Prompts for a NEO checkpoint, prepared exactly like training data.

One home for what ``neo chat``, ``neo serve`` and the ``neo`` recaption backend share: the
packer's smart resize (factor 32) and Pillow bicubic resize
(:func:`neo_data.encoding.images.resize_to_target`), ImageNet normalisation
(:func:`neo_model.model.normalize_image`), and the ``neo1_0`` template through
:func:`neo_data.encoding.tokens.render_turns`; and the pixel budget of a checkpoint. T/H/W
positions of a prompt come from :func:`neo_data.encoding.positions.thw_indices` in
:mod:`neo_model.generate`. Loading the checkpoint is :func:`neo_model.weights.load_for_inference`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from neo_data.encoding.images import FACTOR, resize_to_target
from neo_data.encoding.tokens import NeoTokenizer, render_turns
from neo_data.format.schema import IMAGE_PLACEHOLDER
from neo_model.model import NeoChatModel, normalize_image

# Without a pixel budget in the checkpoint: 1,280 .. 4,096 image tokens (how the released SFT
# models are evaluated).
DEFAULT_MIN_PIXELS = 1280 * FACTOR * FACTOR
DEFAULT_MAX_PIXELS = 4096 * FACTOR * FACTOR


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
