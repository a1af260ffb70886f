"""NEO's mixed attention mask, defined once, and the two kernels that apply it.

Query ``q`` may attend key ``kv`` when both are in the same packed sample and either
``kv <= q`` (causal) or both are ``<IMG_CONTEXT>`` tokens of the same image (bidirectional inside
an image). ``<img>`` / ``</img>`` are ordinary causal tokens. Padding is a sample of its own.

:func:`neo_mask_mod` is the one definition. Two backends apply it:

* ``"flex"``: FlexAttention with a :class:`BlockMask` from ``create_block_mask`` (CUDA training;
  128-token blocks, the sequence padded to a multiple of 128 here).
* ``"sdpa"``: ``scaled_dot_product_attention`` with the dense boolean mask that ``create_mask``
  builds from the same ``mask_mod`` (reference, generation). FlexAttention has no backward
  pass on CPU in torch 2.13.
* ``"sdpa_segments"``: the same mask applied one packed sample at a time (CPU training and
  prefill): samples never see each other, so a row of ``n_i``-token samples costs
  ``sum n_i^2`` instead of ``L^2`` -- 10-30x less for typical packs -- with identical results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import (
    BlockMask,
    create_block_mask,
    create_mask,
    flex_attention,
)

Backend = Literal["sdpa", "sdpa_segments", "flex"]
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
FLEX_BLOCK = 128
PAD_SAMPLE = -1  # sample id of padding (never equal to a real sample id, which are >= 0)


def neo_mask_mod(sample_ids: torch.Tensor, image_ordinal: torch.Tensor) -> MaskMod:
    """The NEO mask as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``.

    Args:
        sample_ids: ``[B, L]`` packed-sample id of every token (padding: its own id).
        image_ordinal: ``[B, L]`` image of every ``<IMG_CONTEXT>`` token, unique within a row;
            -1 for every other token.
    """

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor):
        same_sample = sample_ids[b, q_idx] == sample_ids[b, kv_idx]
        q_image = image_ordinal[b, q_idx]
        same_image = (q_image >= 0) & (q_image == image_ordinal[b, kv_idx])
        return same_sample & ((kv_idx <= q_idx) | same_image)

    return mask_mod


def sample_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """Per-token sample ids ``[length]`` from offsets ``[0, n1, n1+n2, ..., N]``.

    Tokens at or beyond ``cu_seqlens[-1]`` (padding) get :data:`PAD_SAMPLE`.
    """
    cu = cu_seqlens.to(torch.long)
    if cu.ndim != 1 or cu.numel() < 1 or cu[0] != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be 1-D, start at 0 and not decrease, got {cu.tolist()}")
    if int(cu[-1]) > length:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])}, beyond the sequence length {length}")
    positions = torch.arange(length, device=cu.device)
    ids = torch.searchsorted(cu[1:], positions, right=True)
    return torch.where(positions < cu[-1], ids, PAD_SAMPLE)


def stack_sample_ids(
    cu_seqlens: torch.Tensor | Sequence[torch.Tensor], length: int
) -> torch.Tensor:
    """``[B, length]`` sample ids from one ``cu_seqlens`` per row (a 1-D tensor means ``B = 1``)."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.ndim == 1:
        cu_seqlens = [cu_seqlens]
    return torch.stack([sample_ids_from_cu_seqlens(cu, length) for cu in cu_seqlens])


@dataclass(frozen=True)
class DenseMask:
    """A boolean mask ``[B, 1, Q, KV]`` (True = may attend) for SDPA."""

    mask: torch.Tensor


@dataclass(frozen=True)
class SegmentMask:
    """NEO's mask as one dense block per packed sample: ``segments[b]`` lists ``(start, end,
    mask [1, 1, n, n] or None)`` covering row ``b`` (None: plain causal, a text-only sample)."""

    segments: list[list[tuple[int, int, torch.Tensor | None]]]


AttentionMask = DenseMask | SegmentMask | BlockMask


def segment_mask(sample_ids: torch.Tensor, image_ordinal: torch.Tensor) -> SegmentMask:
    """Split ``[B, L]`` rows into their samples (runs of equal ``sample_ids``; padding is a run of
    its own) with each sample's mask: causal, or the same image (bidirectional)."""
    rows = []
    for ids, ordinal in zip(sample_ids, image_ordinal, strict=True):
        change = torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1
        bounds = [0, *change.tolist(), ids.shape[0]]
        row = []
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            o = ordinal[start:end]
            if bool((o >= 0).any()):
                idx = torch.arange(end - start, device=ids.device)
                mask = (idx[:, None] >= idx[None, :]) | (
                    (o[:, None] == o[None, :]) & (o[:, None] >= 0)
                )
                row.append((start, end, mask[None, None]))
            else:
                row.append((start, end, None))
        rows.append(row)
    return SegmentMask(rows)


def build_mask(
    sample_ids: torch.Tensor,
    image_ordinal: torch.Tensor,
    backend: Backend,
    q_offset: int = 0,
) -> AttentionMask:
    """The NEO mask for ``backend`` over ``[B, L]`` tokens.

    Queries are the last ``L - q_offset`` tokens (``q_offset`` > 0 when earlier keys come from a
    KV cache); keys are all ``L`` tokens. The flex backend pads to a multiple of 128; the padding
    is a sample of its own.
    """
    batch, length = sample_ids.shape
    if backend == "sdpa_segments" and not q_offset:
        return segment_mask(sample_ids, image_ordinal)
    if backend in ("sdpa", "sdpa_segments"):
        mask_mod = neo_mask_mod(sample_ids, image_ordinal)
        if q_offset:
            mask_mod = _shift_queries(mask_mod, q_offset)
        dense = create_mask(mask_mod, batch, None, length - q_offset, length, sample_ids.device)
        return DenseMask(dense)
    if backend == "flex":
        if q_offset:
            raise ValueError("the flex backend is for training and prefill; decode with sdpa")
        padded = -(-length // FLEX_BLOCK) * FLEX_BLOCK
        pad = padded - length
        sample_ids = F.pad(sample_ids, (0, pad), value=PAD_SAMPLE)
        image_ordinal = F.pad(image_ordinal, (0, pad), value=-1)
        return create_block_mask(
            neo_mask_mod(sample_ids, image_ordinal),
            batch,
            None,
            padded,
            padded,
            device=sample_ids.device,
            BLOCK_SIZE=FLEX_BLOCK,
        )
    raise ValueError(f"attention backend {backend!r}: expected 'sdpa', 'sdpa_segments' or 'flex'")


def _shift_queries(mask_mod: MaskMod, q_offset: int) -> MaskMod:
    def shifted(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor):
        return mask_mod(b, h, q_idx + q_offset, kv_idx)

    return shifted


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AttentionMask,
    scale: float,
) -> torch.Tensor:
    """Masked attention with grouped KV heads.

    Args:
        query: ``[B, heads, Q, Dqk]``.
        key: ``[B, kv_heads, KV, Dqk]``.
        value: ``[B, kv_heads, KV, Dv]`` (NEO: ``Dv`` = ``Dqk / 2``).
        mask: from :func:`build_mask` for these ``Q`` / ``KV`` lengths.
        scale: softmax scale.

    Returns:
        ``[B, heads, Q, Dv]``.
    """
    if isinstance(mask, DenseMask):
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask.mask, scale=scale, enable_gqa=True
        )
    if isinstance(mask, SegmentMask):
        rows = []
        for b, segments in enumerate(mask.segments):
            q, k, v = query[b : b + 1], key[b : b + 1], value[b : b + 1]
            parts = [
                F.scaled_dot_product_attention(
                    q[:, :, s:e],
                    k[:, :, s:e],
                    v[:, :, s:e],
                    attn_mask=m,
                    is_causal=m is None,
                    scale=scale,
                    enable_gqa=True,
                )  # fmt: skip
                for s, e, m in segments
            ]
            rows.append(torch.cat(parts, dim=2))
        return torch.cat(rows)
    length = query.shape[2]
    padded = mask.seq_lengths[0]
    pad = (0, 0, 0, padded - length)
    out = _flex(query.device)(
        F.pad(query, pad),
        F.pad(key, pad),
        F.pad(value, pad),
        block_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return out[:, :, :length]


_compiled_flex: Callable[..., torch.Tensor] | None = None


def _flex(device: torch.device) -> Callable[..., torch.Tensor]:
    """FlexAttention, compiled on CUDA (its fast kernel); eager elsewhere (forward only)."""
    global _compiled_flex
    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex
