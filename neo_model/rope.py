"""NEO's rotary position embeddings, all computed in fp32.

* The language model's native RoPE (:class:`NativeRope`): rotate-half tables for the three axes
  of every token, T (``head_dim`` wide, ``rope_theta``) and H / W (``head_dim / 2`` each,
  ``rope_theta_hw``), applied to the T / H / W parts of q and k by :func:`apply_rope`.
* The patch embedding's 2D RoPE (:func:`vision_rope_2d`): adjacent-pair rotation of the patch
  features by column and row index, as in the released ``NEOVisionEmbeddings``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neo_model.config import NeoConfig


def inverse_frequencies(dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """``[dim / 2]`` fp32 frequencies ``theta ** (-2i / dim)``."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim
    return 1.0 / (theta**exponents)


def rope_cos_sin(
    positions: torch.Tensor, dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE tables for integer ``positions [B, L]``: cos and sin ``[B, L, dim]``, fp32."""
    freqs = positions.to(torch.float32)[..., None] * inverse_frequencies(
        dim, theta, positions.device
    )
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotates half the hidden dims of the input."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, L, D]`` by tables ``[B, L, D]``; computed in fp32, returned in x's dtype."""
    x32 = x.to(torch.float32)
    cos, sin = cos[:, None], sin[:, None]
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def apply_rope_interleaved(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate adjacent channel pairs ``(2i, 2i+1)`` of ``x [..., D]`` by ``positions [...]``, fp32."""
    angles = positions.to(torch.float32)[..., None] * inverse_frequencies(
        x.shape[-1], theta, x.device
    )
    cos, sin = angles.cos(), angles.sin()
    x32 = x.to(torch.float32)
    even, odd = x32[..., 0::2], x32[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2)


def vision_rope_2d(x: torch.Tensor, theta: float) -> torch.Tensor:
    """2D RoPE on patch features ``x [rows, cols, C]`` (fp32 result).

    The first ``C / 2`` channels are rotated by the patch's column index, the last ``C / 2`` by
    its row index (adjacent-pair rotation), as in the released ``NEOVisionEmbeddings``.
    """
    rows, cols, channels = x.shape
    row_idx = torch.arange(rows, device=x.device)[:, None].expand(rows, cols)
    col_idx = torch.arange(cols, device=x.device)[None, :].expand(rows, cols)
    by_col, by_row = x.split(channels // 2, dim=-1)
    return torch.cat(
        (
            apply_rope_interleaved(by_col, col_idx, theta),
            apply_rope_interleaved(by_row, row_idx, theta),
        ),
        dim=-1,
    )


@dataclass(frozen=True)
class NativeRope:
    """cos/sin tables ``[B, L, dim]`` of the three axes: T (``head_dim``), H and W (``head_dim/2``)."""

    t: tuple[torch.Tensor, torch.Tensor]
    h: tuple[torch.Tensor, torch.Tensor]
    w: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def build(
        cls, config: NeoConfig, t_index: torch.Tensor, h_index: torch.Tensor, w_index: torch.Tensor
    ) -> NativeRope:
        return cls(
            t=rope_cos_sin(t_index, config.head_dim, config.rope_theta),
            h=rope_cos_sin(h_index, config.hw_dim, config.rope_theta_hw),
            w=rope_cos_sin(w_index, config.hw_dim, config.rope_theta_hw),
        )
