"""NEO's mixed attention mask, defined once, and the two kernels that apply it.

Query ``q`` may attend key ``kv`` when both are in the same packed sample and either
``kv <= q`` (causal) or both are ``<IMG_CONTEXT>`` tokens of the same image (bidirectional inside
an image). ``<img>`` / ``</img>`` are ordinary causal tokens. Padding is a sample of its own.

:func:`neo_mask_mod` is the one definition. Two backends apply it:

* ``"flex"``: FlexAttention with a :class:`BlockMask` (CUDA training and prefill; 128-token
  blocks, queries and keys padded to multiples of 128 here), read off the sample and image runs
  in O(L) (:func:`block_mask_from_runs`) rather than by evaluating the mask on every pair.
* ``"sdpa"``: ``scaled_dot_product_attention`` with the dense boolean mask that ``create_mask``
  builds from the same ``mask_mod`` (reference, decoding). FlexAttention has no backward
  pass on CPU in torch 2.13.
* ``"sdpa_segments"``: the same mask applied one packed sample at a time (CPU training and
  prefill): samples never see each other, so a row of ``n_i``-token samples costs
  ``sum n_i^2`` instead of ``L^2`` -- 10-30x less for typical packs -- with identical results;
  inside a sample, image runs cut it into pieces that need at most ``1024 x n_i`` of mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

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
    """NEO's mask one packed sample at a time: ``segments[b]`` lists ``(start, end, images)``
    covering row ``b``, ``images`` the ``(start, end)`` runs of each image inside the sample
    (empty: plain causal, a text-only sample). No mask tensor is stored; :func:`attend` makes
    the small ones it needs."""

    segments: list[list[tuple[int, int, list[tuple[int, int]]]]]


AttentionMask = DenseMask | SegmentMask | BlockMask


class _Runs(NamedTuple):
    """Per token ``[B, L]``: where runs start, and the interval of keys each token may see."""

    new_sample: torch.Tensor  # bool: first token of a sample
    image_start: torch.Tensor  # bool: first token of an image run
    sample_run: torch.Tensor  # the sample's run index
    image_run: torch.Tensor  # the image's run index, -1 outside images
    lo: torch.Tensor  # first key the token may see: its sample's first token
    hi: torch.Tensor  # last key it may see: itself, or the last token of its image


def _runs(sample_ids: torch.Tensor, image_ordinal: torch.Tensor) -> _Runs:
    """:class:`_Runs` of ``[B, L]`` rows in O(L).

    A sample is a run of equal ``sample_ids``; an image a run of equal ``image_ordinal`` >= 0
    inside one sample. The keys a token may see under :func:`neo_mask_mod` are then one interval
    ``[lo, hi]`` (earlier tokens of its sample, plus the rest of its image), and both ``lo`` and
    ``hi`` never decrease along the row: the block mask is read off them.
    """
    batch, length = sample_ids.shape
    pos = torch.arange(length, device=sample_ids.device).expand(batch, length)
    new_sample = F.pad(sample_ids[:, 1:] != sample_ids[:, :-1], (1, 0), value=True)
    new_run = new_sample | F.pad(image_ordinal[:, 1:] != image_ordinal[:, :-1], (1, 0), value=True)
    is_image = image_ordinal >= 0
    last_of_run = F.pad(new_run[:, 1:], (0, 1), value=True)
    run_last = torch.where(last_of_run, pos, length).flip(1).cummin(1).values.flip(1)
    return _Runs(
        new_sample=new_sample,
        image_start=new_run & is_image,
        sample_run=new_sample.cumsum(1),
        image_run=torch.where(is_image, new_run.cumsum(1), -1),
        lo=torch.where(new_sample, pos, 0).cummax(1).values,
        hi=torch.where(is_image, run_last, pos),
    )


def segment_mask(sample_ids: torch.Tensor, image_ordinal: torch.Tensor) -> SegmentMask:
    """Split ``[B, L]`` rows into their samples (runs of equal ``sample_ids``; padding is a run of
    its own), each with its image runs."""
    runs = _runs(sample_ids, image_ordinal)
    length = sample_ids.shape[1]
    rows = []
    for b in range(sample_ids.shape[0]):
        bounds = runs.new_sample[b].nonzero().flatten().tolist() + [length]
        first = runs.image_start[b].nonzero().flatten()
        images = list(zip(first.tolist(), (runs.hi[b, first] + 1).tolist(), strict=True))
        row, k = [], 0
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            inside = []
            while k < len(images) and images[k][0] < end:
                inside.append(images[k])
                k += 1
            row.append((start, end, inside))
        rows.append(row)
    return SegmentMask(rows)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, Qb, KVb]`` bool blocks -> BlockMask's ``(num_blocks [B, 1, Qb], indices [B, 1, Qb,
    KVb])``: each row's blocks first, ascending, as ``create_block_mask`` orders them."""
    blocks = blocks[:, None]
    taken = blocks.cumsum(-1)  # 1-based rank of each True block among its row's
    count = taken[..., -1:]
    rank = torch.where(blocks, taken, count + (~blocks).cumsum(-1)) - 1
    columns = torch.arange(blocks.shape[-1], device=blocks.device).expand_as(rank)
    indices = torch.empty_like(rank).scatter_(-1, rank, columns)
    return count[..., 0].to(torch.int32), indices.to(torch.int32)


def block_mask_from_runs(
    sample_ids: torch.Tensor, image_ordinal: torch.Tensor, q_offset: int = 0
) -> BlockMask:
    """NEO's :class:`BlockMask` read off the sample and image runs: O(L) work on tokens and
    O(blocks^2) on 128 x 128 blocks, never an ``L x L`` tensor (``create_block_mask`` evaluates
    the mask on every pair: 16 s and 10 GiB on a CPU at 32k tokens).

    Queries are the last ``L - q_offset`` tokens, keys all ``L``; both padded to multiples of
    :data:`FLEX_BLOCK` (padding: a sample of its own). Equal to :func:`_block_mask_dense` (its
    ``kv_num_blocks`` / ``kv_indices`` and the full ones) whenever every sample is one run of
    ``sample_ids``; partial blocks apply :func:`neo_mask_mod` on the run indices.
    """
    batch, length = sample_ids.shape
    device = sample_ids.device
    q_pad, kv_pad = _round_up(length - q_offset), _round_up(length)
    total = max(kv_pad, q_offset + q_pad)
    runs = _runs(
        F.pad(sample_ids, (0, total - length), value=PAD_SAMPLE),
        F.pad(image_ordinal, (0, total - length), value=-1),
    )
    q_first = q_offset + torch.arange(0, q_pad, FLEX_BLOCK, device=device)
    q_last = q_first + FLEX_BLOCK - 1
    kv_first = torch.arange(0, kv_pad, FLEX_BLOCK, device=device)
    kv_last = kv_first + FLEX_BLOCK - 1
    # Full: every query of the block sees every key of it (lo, hi never decrease).
    full = (runs.lo[:, q_last, None] <= kv_first) & (runs.hi[:, q_first, None] >= kv_last)
    # Any: some query q of the block has lo(q) <= kv_last and hi(q) >= kv_first.
    sees_from = torch.searchsorted(runs.hi, kv_first.expand(batch, -1).contiguous())
    sees_to = torch.searchsorted(runs.lo, kv_last.expand(batch, -1).contiguous(), right=True) - 1
    some = torch.maximum(q_first[:, None], sees_from[:, None]) <= torch.minimum(
        q_last[:, None], sees_to[:, None]
    )
    mask_mod = neo_mask_mod(runs.sample_run, runs.image_run)
    if q_offset:
        mask_mod = _shift_queries(mask_mod, q_offset)
    partial = some & ~full
    # The constructor, not from_kv_blocks: the q-side (backward) indices come from the same
    # block grids transposed, instead of rebuilding them from the kv indices.
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    q_num, q_idx = _ordered(partial.transpose(1, 2))
    full_q_num, full_q_idx = _ordered(full.transpose(1, 2))
    return BlockMask(
        seq_lengths=(q_pad, kv_pad),
        kv_num_blocks=kv_num,
        kv_indices=kv_idx,
        full_kv_num_blocks=full_num,
        full_kv_indices=full_idx,
        q_num_blocks=q_num,
        q_indices=q_idx,
        full_q_num_blocks=full_q_num,
        full_q_indices=full_q_idx,
        BLOCK_SIZE=(FLEX_BLOCK, FLEX_BLOCK),
        mask_mod=mask_mod,
    )


def _block_mask_dense(
    sample_ids: torch.Tensor, image_ordinal: torch.Tensor, q_offset: int = 0
) -> BlockMask:
    """The former flex path, kept as the reference and the benchmark's baseline: uncompiled
    ``create_block_mask``, which evaluates :func:`neo_mask_mod` on all ``Q x KV`` pairs."""
    batch, length = sample_ids.shape
    q_pad, kv_pad = _round_up(length - q_offset), _round_up(length)
    total = max(kv_pad, q_offset + q_pad)
    sample_ids = F.pad(sample_ids, (0, total - length), value=PAD_SAMPLE)
    image_ordinal = F.pad(image_ordinal, (0, total - length), value=-1)
    mask_mod = neo_mask_mod(sample_ids, image_ordinal)
    if q_offset:
        mask_mod = _shift_queries(mask_mod, q_offset)
    return create_block_mask(
        mask_mod, batch, None, q_pad, kv_pad, device=sample_ids.device, BLOCK_SIZE=FLEX_BLOCK
    )


def _round_up(n: int) -> int:
    return -(-n // FLEX_BLOCK) * FLEX_BLOCK


def build_mask(
    sample_ids: torch.Tensor,
    image_ordinal: torch.Tensor,
    backend: Backend,
    q_offset: int = 0,
) -> AttentionMask:
    """The NEO mask for ``backend`` over ``[B, L]`` tokens.

    Queries are the last ``L - q_offset`` tokens (``q_offset`` > 0 when earlier keys come from a
    KV cache); keys are all ``L`` tokens. The flex backend pads queries and keys to multiples of
    128; the padding is a sample of its own. No backend but ``"sdpa"`` (and ``"sdpa_segments"``
    with a ``q_offset``, i.e. decoding) makes an ``L x L`` tensor.
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
        return block_mask_from_runs(sample_ids, image_ordinal, q_offset)
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
                part
                for start, end, images in segments
                for part in _sample_attention(q, k, v, start, end, images, scale)
            ]
            rows.append(torch.cat(parts, dim=2))
        return torch.cat(rows)
    q_len, kv_len = query.shape[2], key.shape[2]
    q_pad, kv_pad = mask.seq_lengths
    out = _flex(query.device)(
        F.pad(query, (0, 0, 0, q_pad - q_len)),
        F.pad(key, (0, 0, 0, kv_pad - kv_len)),
        F.pad(value, (0, 0, 0, kv_pad - kv_len)),
        block_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return out[:, :, :q_len]


SEGMENT_TILE = 1024  # queries per SDPA call after a sample's first image: masks of <= 1024 x n


def _sample_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    end: int,
    images: list[tuple[int, int]],
    scale: float,
) -> list[torch.Tensor]:
    """Attention outputs of one sample's queries ``[start, end)``, in order, in pieces.

    Text-only: one causal call. With images the sample is cut at its image runs: an image's
    queries see every key from ``start`` to the image's end (no mask); a text piece sees the
    keys before it (no mask needed) and itself causally (a bottom-right causal mask of its
    ``<= SEGMENT_TILE`` queries by the keys so far), so no ``n x n`` mask is ever made.
    """

    def sdpa(qs: int, qe: int, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q[:, :, qs:qe],
            k[:, :, start:qe],
            v[:, :, start:qe],
            attn_mask=mask,
            is_causal=causal,
            scale=scale,
            enable_gqa=True,
        )

    cuts = [start, *(x for run in images for x in run), end]
    parts = []
    for i, (ps, pe) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        if pe == ps:
            continue
        if i % 2:  # an image run
            parts.append(sdpa(ps, pe, None, False))
        elif ps == start:
            parts.append(sdpa(ps, pe, None, True))
        else:
            for ts in range(ps, pe, SEGMENT_TILE):
                te = min(ts + SEGMENT_TILE, pe)
                keys = torch.arange(start, te, device=q.device)
                mask = keys[None, :] <= torch.arange(ts, te, device=q.device)[:, None]
                parts.append(sdpa(ts, te, mask[None, None], False))
    return parts


_compiled_flex: Callable[..., torch.Tensor] | None = None


def _flex(device: torch.device) -> Callable[..., torch.Tensor]:
    """FlexAttention, compiled on CUDA (its fast kernel); eager elsewhere (forward only)."""
    global _compiled_flex
    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex
