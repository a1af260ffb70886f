"""NEO's image preprocessing as a Hugging Face image processor (remote code), written by ``neo``.

The released preprocessing (VLMEvalKit's ``load_image_native``): RGB; smart resize to multiples
of 32 px (``patch_size / downsample_ratio``) with the area inside ``[min_pixels, max_pixels]``
(Pillow bicubic); ImageNet normalisation; 16x16 patches in row-major order, each flattened
channel-major. Output: ``pixel_values [sum(h*w), 3*16*16]`` and ``grid_hw [images, 2]`` in
16-px units, what ``NEOChatModel.chat`` / ``generate`` take. The pixel budget defaults to the
checkpoint's (``preprocessor_config.json``, written from its ``vision_config``).

Standalone (numpy, Pillow, torch, transformers): it must run where ``neo`` is not installed,
so the resize rule is restated here rather than imported from ``neo_data.encoding.images``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ASPECT = 200


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Target ``(height, width)``: multiples of ``factor`` near the original, area in budget."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(
            f"image {width}x{height}: aspect ratio above {MAX_ASPECT} cannot be processed"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class NEOImageProcessor(BaseImageProcessor):
    """PIL images -> ``pixel_values`` (flattened patches) and ``grid_hw`` (16-px units)."""

    model_input_names = ["pixel_values", "grid_hw"]

    def __init__(
        self,
        patch_size: int = 16,
        downsample_ratio: float = 0.5,
        min_pixels: int = 65536,
        max_pixels: int = 4194304,
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.downsample_ratio = downsample_ratio
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def resize_image(self, image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
        factor = round(self.patch_size / self.downsample_ratio)
        height, width = smart_resize(image.height, image.width, factor, min_pixels, max_pixels)
        return image.resize((width, height), Image.Resampling.BICUBIC)

    def patchify(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """One resized RGB image -> its patches ``[h*w, 3*p*p]`` and ``(h, w)``."""
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        pixels = pixels.permute(2, 0, 1).to(torch.float32) / 255.0
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        pixels = (pixels - mean) / std
        p = self.patch_size
        h, w = pixels.shape[1] // p, pixels.shape[2] // p
        patches = pixels.view(3, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, 3 * p * p)
        return patches, (h, w)

    def preprocess(
        self,
        images: Image.Image | list[Image.Image],
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Images, in order, as one ``pixel_values`` / ``grid_hw`` pair (the released layout)."""
        if isinstance(images, Image.Image):
            images = [images]
        min_pixels = self.min_pixels if min_pixels is None else min_pixels
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
        all_patches, grids = [], []
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"images[{i}] is a {type(image).__name__}, expected a PIL image")
            resized = self.resize_image(image.convert("RGB"), min_pixels, max_pixels)
            patches, grid = self.patchify(resized)
            all_patches.append(patches)
            grids.append(grid)
        data = {
            "pixel_values": torch.cat(all_patches),
            "grid_hw": torch.tensor(grids, dtype=torch.long),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)
