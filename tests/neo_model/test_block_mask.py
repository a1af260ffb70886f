"""The block mask read off the sample and image runs equals ``create_block_mask`` over every pair
(the former path, kept as ``_block_mask_dense``), and the pieces of ``sdpa_segments`` equal the
dense mask."""

from __future__ import annotations

import pytest
import torch

import neo_model.attention as attention
from neo_model.attention import (
    FLEX_BLOCK,
    PAD_SAMPLE,
    _block_mask_dense,
    attend,
    block_mask_from_runs,
    build_mask,
)

FIELDS = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def random_rows(batch: int, length: int, pad: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` sample ids and image ordinals: samples of 1-300 tokens holding image runs of
    1-200 tokens (many cross or touch 128-token block edges), then ``pad`` padding tokens."""
    gen = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=gen))

    ids = torch.full((batch, length), PAD_SAMPLE)
    ordinal = torch.full((batch, length), -1)
    for b in range(batch):
        pos = sample = image = 0
        while pos < length - pad:
            n = min(draw(1, 300), length - pad - pos)
            ids[b, pos : pos + n] = sample
            p = pos + draw(0, 20)
            while p < pos + n:
                g = min(draw(1, 200), pos + n - p)
                ordinal[b, p : p + g] = image
                image += 1
                p += g + draw(0, 60)
            pos, sample = pos + n, sample + 1
    return ids, ordinal


def edge_row() -> tuple[torch.Tensor, torch.Tensor]:
    """One row whose samples and images start and end exactly on block edges (and one past)."""
    ids = torch.zeros(1, 5 * FLEX_BLOCK, dtype=torch.long)
    ids[0, 2 * FLEX_BLOCK :] = 1
    ids[0, 4 * FLEX_BLOCK + 1 :] = 2
    ordinal = torch.full_like(ids, -1)
    ordinal[0, FLEX_BLOCK : 2 * FLEX_BLOCK] = 0  # the last block of sample 0, exactly
    ordinal[0, 2 * FLEX_BLOCK : 3 * FLEX_BLOCK + 1] = 1  # one token past a block edge
    ordinal[0, 4 * FLEX_BLOCK + 1 : 4 * FLEX_BLOCK + 3] = 2
    return ids, ordinal


def assert_same_block_mask(new, old) -> None:
    assert new.seq_lengths == old.seq_lengths
    assert new.BLOCK_SIZE == old.BLOCK_SIZE
    for name in FIELDS:
        a, b = getattr(new, name), getattr(old, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    assert torch.equal(new.to_dense(), old.to_dense())


CASES = [(1, 700, 0), (1, 1000, 333), (2, 900, 50), (3, 256, 0), (2, 129, 1), (1, 1, 0)]


@pytest.mark.parametrize(("batch", "length", "pad"), CASES)
def test_block_mask_from_runs_equals_create_block_mask(batch, length, pad):
    for seed in range(3):
        ids, ordinal = random_rows(batch, length, pad, seed)
        assert_same_block_mask(block_mask_from_runs(ids, ordinal), _block_mask_dense(ids, ordinal))


@pytest.mark.parametrize(("batch", "length", "pad"), CASES[:4])
def test_block_mask_with_a_q_offset_equals_create_block_mask(batch, length, pad):
    """Queries after a cache (decode, chunked prefill): the last ``L - q_offset`` rows."""
    ids, ordinal = random_rows(batch, length, pad, seed=7)
    for q_offset in (1, FLEX_BLOCK, length // 2 + 3, length - 1):
        assert_same_block_mask(
            block_mask_from_runs(ids, ordinal, q_offset),
            _block_mask_dense(ids, ordinal, q_offset),
        )


def test_block_edges_and_the_full_blocks():
    ids, ordinal = edge_row()
    new = block_mask_from_runs(ids, ordinal)
    assert_same_block_mask(new, _block_mask_dense(ids, ordinal))

    def blocks(kind: str, q_block: int) -> list[int]:
        num = getattr(new, f"{kind}kv_num_blocks")[0, 0, q_block]
        return sorted(getattr(new, f"{kind}kv_indices")[0, 0, q_block, :num].tolist())

    # Sample 0's image fills block 1: that block sees block 0 and itself fully.
    assert blocks("full_", 1) == [0, 1] and blocks("", 1) == []
    # Block 2 opens sample 1 with an image one token longer than the block: itself full, the
    # next block partly (its first token), nothing of sample 0.
    assert blocks("full_", 2) == [2] and blocks("", 2) == [3]
    # Block 4: sample 1's last token, then sample 2 (its first image at 4 * 128 + 1).
    assert blocks("full_", 4) == [] and blocks("", 4) == [2, 3, 4]


def test_the_mask_mod_of_partial_blocks_is_the_neo_mask():
    ids, ordinal = random_rows(2, 300, 20, seed=3)
    dense = build_mask(ids, ordinal, "sdpa").mask[:, 0]
    mask = block_mask_from_runs(ids, ordinal)
    for b in range(2):
        for q in range(300):
            row = mask.mask_mod(
                torch.tensor(b), torch.tensor(0), torch.tensor(q), torch.arange(300)
            )
            assert torch.equal(row, dense[b, q]), (b, q)


def qkv(batch: int, q_len: int, kv_len: int, grad: bool = False) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = ((4, q_len, 16), (2, kv_len, 16), (2, kv_len, 8))
    return [torch.randn(batch, *s, generator=gen).requires_grad_(grad) for s in shapes]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_with_the_new_mask_equals_the_old_and_sdpa():
    ids, ordinal = random_rows(2, 300, 40, seed=5)
    inputs = qkv(2, 300, 300)
    new = attend(*inputs, build_mask(ids, ordinal, "flex"), 0.25)
    old = attend(*inputs, _block_mask_dense(ids, ordinal), 0.25)
    sdpa = attend(*inputs, build_mask(ids, ordinal, "sdpa"), 0.25)
    torch.testing.assert_close(new, old)
    torch.testing.assert_close(new, sdpa)
    # Decode after a cache: the flex queries past q_offset equal the dense mask's rows.
    q_offset = 211
    query = inputs[0][:, :, q_offset:]
    tail = attend(query, *inputs[1:], build_mask(ids, ordinal, "flex", q_offset), 0.25)
    torch.testing.assert_close(tail, sdpa[:, :, q_offset:])


def test_segments_cut_at_images_equal_the_dense_mask_forward_and_backward(monkeypatch):
    """Long text after an image is attended in query tiles (tile 64 here, so the test is small)."""
    monkeypatch.setattr(attention, "SEGMENT_TILE", 64)
    ids, ordinal = random_rows(2, 700, 30, seed=11)
    ordinal[0, :5] = 99  # an image opening the row's first sample
    ordinal[0, 5:400] = -1  # then long text
    segments = build_mask(ids, ordinal, "sdpa_segments")
    assert any(images for row in segments.segments for _, _, images in row)
    outs, grads = {}, {}
    for name, mask in (("segments", segments), ("sdpa", build_mask(ids, ordinal, "sdpa"))):
        inputs = qkv(2, 700, 700, grad=True)
        outs[name] = attend(*inputs, mask, 0.25)
        grads[name] = torch.autograd.grad(outs[name].square().sum(), inputs)
    torch.testing.assert_close(outs["segments"], outs["sdpa"])
    for a, b in zip(grads["segments"], grads["sdpa"], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_block_mask_on_cuda_equals_cpu_and_compiled_flex_agrees_with_the_old_mask():
    """On CUDA: the same blocks as on the CPU, and compiled FlexAttention forward + backward
    with the new mask equals that with ``create_block_mask``'s (images across block edges)."""
    ids, ordinal = random_rows(2, 1000, 100, seed=2)
    cpu = block_mask_from_runs(ids, ordinal)
    ids, ordinal = ids.cuda(), ordinal.cuda()
    new = block_mask_from_runs(ids, ordinal)
    for name in FIELDS:
        assert torch.equal(getattr(new, name).cpu(), getattr(cpu, name)), name
    results = []
    for mask in (new, _block_mask_dense(ids, ordinal)):
        inputs = [x.cuda().requires_grad_() for x in qkv(2, 1000, 1000)]
        out = attend(*inputs, mask, 0.25)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        results.append((out, *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
