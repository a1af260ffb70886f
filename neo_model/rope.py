"""NEO's rotary position embeddings, all computed in fp32.

* The language model's native RoPE (:class:`NativeRope`): rotate-half tables for the three axes
  of every token, T (``head_dim`` wide, ``rope_theta``) and H / W (``head_dim / 2`` each,
  ``rope_theta_hw``), applied to the T / H / W parts of q and k by :func:`apply_rope`.
* The 1D-RoPE ablation (:func:`text_run_positions`): the same tokens with every image as a run
  of text positions, from the native indices (``NeoConfig.rope == "1d"``).
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


def text_run_positions(
    t_index: torch.Tensor, sample_ids: torch.Tensor, image_ordinal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 1D-RoPE ablation's ``(t, h, w)`` from the native ``t_index [B, L]``.

    Native RoPE gives all tokens of one image one T; here each image token takes a T of its own,
    as if the image were text: token ``k`` of a sample gets its native T plus the number of
    image tokens before it in the sample that did not advance T (every image token after its
    image's first). H = W = 0 everywhere (the H/W parts of q/k see no position). ``sample_ids``
    and ``image_ordinal`` ``[B, L']`` may be longer than ``t_index`` (``L' >= L``: a KV cache's
    history in front); the last ``L`` positions are returned, so decoding continues the run.
    """
    length = t_index.shape[1]
    is_image = image_ordinal >= 0
    same_prev = torch.zeros_like(is_image)
    same_prev[:, 1:] = (image_ordinal[:, 1:] == image_ordinal[:, :-1]) & (
        sample_ids[:, 1:] == sample_ids[:, :-1]
    )
    extra = (is_image & same_prev).long()  # image tokens that native RoPE did not step T for
    inclusive = extra.cumsum(dim=1)
    starts = torch.ones_like(is_image)
    starts[:, 1:] = sample_ids[:, 1:] != sample_ids[:, :-1]
    positions = torch.arange(sample_ids.shape[1], device=sample_ids.device).expand_as(sample_ids)
    first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    before_sample = (inclusive - extra).gather(1, first)  # run count before the sample's start
    shift = (inclusive - before_sample)[:, -length:]
    t = t_index + shift.to(t_index.dtype)
    zeros = torch.zeros_like(t)
    return t, zeros, zeros
