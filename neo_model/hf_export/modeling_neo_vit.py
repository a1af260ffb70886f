"""NEO's patch embedding (remote code of a neo export; see ``modeling_neo_chat``): conv 16/16
-> GELU -> 2D RoPE on the features -> conv 2/2, from the released flattened-patch inputs.

Standalone: torch and transformers only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_neo_chat import NEOVisionConfig


def inverse_frequencies(dim: int, theta: float, device: torch.device) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim
    return 1.0 / (theta**exponents)


def _rope_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Adjacent-pair rotation of ``x [N, D]`` by ``positions [N]`` (fp32)."""
    angles = positions.to(torch.float32)[:, None] * inverse_frequencies(
        x.shape[-1], theta, x.device
    )
    cos, sin = angles.cos(), angles.sin()
    x32 = x.to(torch.float32)
    even, odd = x32[:, 0::2], x32[:, 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def grid_positions(grid_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every cell of images with ``grid_hw [images, 2]`` cells, row-major."""
    rows, cols = [], []
    for h, w in grid_hw.tolist():
        idx = torch.arange(h * w, device=grid_hw.device)
        rows.append(idx // w)
        cols.append(idx % w)
    return torch.cat(rows), torch.cat(cols)


# ---------------------------------------------------------------------------------------------
# Patch embedding
# ---------------------------------------------------------------------------------------------


class NEOVisionEmbeddings(nn.Module):
    """Conv 16/16 -> GELU -> 2D RoPE (first half of the channels by column, second by row)
    -> conv 2/2: one token per 32x32 pixels."""

    def __init__(self, config: NEOVisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.merge = round(1 / config.downsample_ratio)
        self.rope_theta = config.rope_theta_vision
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.dense_embedding = nn.Conv2d(
            config.hidden_size, config.llm_hidden_size, self.merge, stride=self.merge
        )

    def forward(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor) -> torch.Tensor:
        """``pixel_values [sum(h*w), 3*p*p]``, ``grid_hw [images, 2]`` -> tokens
        ``[sum(h*w) / merge^2, llm_hidden]``, image by image, row-major."""
        dtype = self.patch_embedding.weight.dtype
        patches = pixel_values.to(dtype).view(-1, 3, self.patch_size, self.patch_size)
        features = F.gelu(self.patch_embedding(patches)).flatten(1)  # [N, C]
        if features.shape[0] != int(grid_hw.prod(-1).sum()):
            raise ValueError(
                f"pixel_values has {features.shape[0]} patches, grid_hw {grid_hw.tolist()} "
                f"says {int(grid_hw.prod(-1).sum())}"
            )
        rows, cols = grid_positions(grid_hw)
        by_col, by_row = features.chunk(2, dim=-1)
        features = torch.cat(
            (
                _rope_pairs(by_col, cols, self.rope_theta),
                _rope_pairs(by_row, rows, self.rope_theta),
            ),
            dim=-1,
        ).to(dtype)
        tokens, start = [], 0
        for h, w in grid_hw.tolist():
            image = features[start : start + h * w].view(h, w, -1).permute(2, 0, 1)[None]
            tokens.append(self.dense_embedding(image)[0].flatten(1).transpose(0, 1))
            start += h * w
        return torch.cat(tokens)


class NEOVisionModel(nn.Module):
    def __init__(self, config: NEOVisionConfig) -> None:
        super().__init__()
        self.embeddings = NEOVisionEmbeddings(config)

    def forward(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor) -> torch.Tensor:
        return self.embeddings(pixel_values, grid_hw)
