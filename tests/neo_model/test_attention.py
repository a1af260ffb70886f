"""NEO's mixed mask: one definition, two backends that agree."""

from __future__ import annotations

import pytest
import torch

from neo_data.encoding.tokens import IMG_CONTEXT_ID, IMG_END_ID, IMG_START_ID
from neo_model.attention import (
    PAD_SAMPLE,
    DenseMask,
    attend,
    build_mask,
    sample_ids_from_cu_seqlens,
)
from tests.neo_model.neo_inputs import make_pack, make_sample


@pytest.fixture(scope="module")
def pack(tok):
    """Two packed samples (two images in the first, one in the second) plus padding."""
    first = make_sample(
        tok,
        [("user", "<image> and <image>: same?"), ("assistant", "No.")],
        [(2, 2), (1, 3)],
    )
    second = make_sample(tok, [("user", "<image>\nWhat is it?"), ("assistant", "A dog.")], [(2, 1)])
    return make_pack([first, second], pad_to=64)


def dense(pack) -> torch.Tensor:
    sample_ids = sample_ids_from_cu_seqlens(pack["cu_seqlens"], pack["input_ids"].shape[1])
    return build_mask(sample_ids[None], pack["image_ordinal"], "sdpa").mask[0, 0]


def test_sample_ids_from_cu_seqlens_marks_padding():
    ids = sample_ids_from_cu_seqlens(torch.tensor([0, 3, 5]), 7)
    assert ids.tolist() == [0, 0, 0, 1, 1, PAD_SAMPLE, PAD_SAMPLE]
    with pytest.raises(ValueError, match="beyond"):
        sample_ids_from_cu_seqlens(torch.tensor([0, 9]), 7)


def test_mask_rules(pack):
    mask = dense(pack)
    ids = pack["input_ids"][0]
    ordinal = pack["image_ordinal"][0]
    sample = sample_ids_from_cu_seqlens(pack["cu_seqlens"], len(ids))
    n = len(ids)
    q, kv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    same_sample = sample[q] == sample[kv]
    # Packed samples (and the padding) never see each other.
    assert not mask[~same_sample].any()
    # Causal inside a sample.
    assert mask[same_sample & (kv <= q)].all()
    # Non-causal pairs are allowed exactly between image tokens of one image.
    future = mask & (kv > q)
    same_image = (ordinal[q] >= 0) & (ordinal[q] == ordinal[kv])
    assert torch.equal(future, same_image & (kv > q))
    # Text (and <img> / </img>) never sees a later token.
    is_image = ids == IMG_CONTEXT_ID
    assert not future[~is_image].any()
    assert not future[(ids == IMG_START_ID) | (ids == IMG_END_ID)].any()
    # Every image token sees its whole image, and no other image's later tokens.
    for k in range(3):
        tokens = torch.nonzero(ordinal == k).flatten()
        assert mask[tokens][:, tokens].all()
    assert ordinal.max() == 2 and (ordinal >= 0).sum() == 4 + 3 + 2


def test_flex_and_dense_masks_agree(pack):
    sample_ids = sample_ids_from_cu_seqlens(pack["cu_seqlens"], pack["input_ids"].shape[1])[None]
    block = build_mask(sample_ids, pack["image_ordinal"], "flex")
    n = pack["input_ids"].shape[1]
    assert block.seq_lengths == (128, 128)  # padded to a multiple of the 128-token block
    rebuilt = torch.zeros(n, n, dtype=torch.bool)
    for qi in range(n):
        rebuilt[qi] = block.mask_mod(
            torch.tensor(0), torch.tensor(0), torch.tensor(qi), torch.arange(n)
        )
    assert torch.equal(rebuilt, dense(pack))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_and_sdpa_attention_agree(pack):
    """FlexAttention (CPU eager, forward only) and SDPA with the dense mask give one result."""
    torch.manual_seed(0)
    n = pack["input_ids"].shape[1]
    query = torch.randn(1, 4, n, 64)
    key = torch.randn(1, 2, n, 64)
    value = torch.randn(1, 2, n, 32)
    sample_ids = sample_ids_from_cu_seqlens(pack["cu_seqlens"], n)[None]
    out = {
        backend: attend(
            query, key, value, build_mask(sample_ids, pack["image_ordinal"], backend), 0.125
        )
        for backend in ("sdpa", "flex")
    }
    assert out["sdpa"].shape == (1, 4, n, 32)
    torch.testing.assert_close(out["flex"], out["sdpa"])


def test_decode_mask_continues_the_prefill_mask(pack):
    """Queries after a cache (q_offset) get the rows of the full mask."""
    n = pack["input_ids"].shape[1]
    sample_ids = sample_ids_from_cu_seqlens(pack["cu_seqlens"], n)[None]
    full = build_mask(sample_ids, pack["image_ordinal"], "sdpa")
    tail = build_mask(sample_ids, pack["image_ordinal"], "sdpa", q_offset=n - 5)
    assert isinstance(tail, DenseMask)
    assert torch.equal(tail.mask, full.mask[:, :, n - 5 :])


def test_per_sample_attention_equals_the_dense_mask_forward_and_backward(pack):
    """``sdpa_segments`` (one dense block per packed sample, the CPU training path) gives the
    dense-mask result and gradients, padding included."""
    torch.manual_seed(0)
    n = pack["input_ids"].shape[1] + 5  # 5 padding tokens: a sample of their own
    ordinal = torch.nn.functional.pad(pack["image_ordinal"], (0, 5), value=-1)
    sample_ids = sample_ids_from_cu_seqlens(pack["cu_seqlens"], n)[None]
    inputs = [torch.randn(1, h, n, d, requires_grad=True) for h, d in ((4, 64), (2, 64), (2, 32))]
    grads, outs = {}, {}
    for backend in ("sdpa", "sdpa_segments"):
        out = attend(*inputs, build_mask(sample_ids, ordinal, backend), 0.125)
        outs[backend] = out
        grads[backend] = torch.autograd.grad(out.square().sum(), inputs)
    assert len(build_mask(sample_ids, ordinal, "sdpa_segments").segments[0]) == len(
        pack["cu_seqlens"]
    )  # every sample, plus the padding
    torch.testing.assert_close(outs["sdpa_segments"], outs["sdpa"])
    for a, b in zip(grads["sdpa_segments"], grads["sdpa"], strict=True):
        torch.testing.assert_close(a, b)
