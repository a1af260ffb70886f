"""Whole-model invariants on the random debug NEO: who sees whom, image tokens, the loss."""

from __future__ import annotations

import copy
from unittest.mock import patch

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from neo_data.encoding.positions import ImageTokenMismatch
from neo_data.encoding.tokens import IMG_CONTEXT_ID, IMG_START_ID
from neo_model.config import debug, neo_2_2b, neo_9b
from neo_model.loss import loss_weights
from neo_model.model import NeoChatModel, NeoVisionEmbeddings, normalize_image
from neo_model.rope import vision_rope_2d
from tests.neo_model.neo_inputs import make_pack, make_sample, model_inputs, random_images

CAPTION = [("user", "Look: <image>\nDescribe it."), ("assistant", "A red square on grey.")]


@pytest.fixture(scope="module")
def caption_pack(tok):
    return make_pack([make_sample(tok, CAPTION, [(2, 2)])])


def logits(model, pack, images, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(*model_inputs(pack), pixel_values=images, **kwargs).logits[0]


def test_image_pixels_reach_earlier_tokens_of_their_image_but_not_earlier_text(
    debug_model, caption_pack
):
    images = random_images([(2, 2)])
    changed = [images[0].clone()]
    changed[0][:, 32:, 32:] += 1.0  # only the last of the 4 image tokens (bottom right)
    before, after = (
        logits(debug_model, caption_pack, images),
        logits(debug_model, caption_pack, changed),
    )
    ids = caption_pack["input_ids"][0]
    image_tokens = torch.nonzero(ids == IMG_CONTEXT_ID).flatten()
    first_image_token = int(image_tokens[0])
    assert int(torch.nonzero(ids == IMG_START_ID)) == first_image_token - 1
    # Everything before the image (including <img>) is untouched, bit for bit.
    assert torch.equal(before[:first_image_token], after[:first_image_token])
    # The first image token attends to the last one (bidirectional inside the image).
    for i in image_tokens[:3]:
        assert not torch.allclose(before[i], after[i])
    # Text after the image sees it.
    assert not torch.allclose(before[-1], after[-1])


def test_text_never_sees_later_text(debug_model, caption_pack):
    images = random_images([(2, 2)])
    edited = {k: v.clone() for k, v in caption_pack.items()}
    edited["input_ids"][0, -3] = 1234
    before, after = logits(debug_model, caption_pack, images), logits(debug_model, edited, images)
    assert torch.equal(before[:-3], after[:-3])
    assert not torch.allclose(before[-3:], after[-3:])


def test_packed_samples_never_see_each_other(debug_model, tok):
    first = make_sample(tok, [("user", "Hi <image>"), ("assistant", "Hello.")], [(1, 2)])
    second = make_sample(tok, [("user", "<image> What colour?"), ("assistant", "Blue.")], [(2, 1)])
    third = make_sample(tok, [("user", "Another <image>"), ("assistant", "Yes.")], [(1, 1)])
    images = random_images([(1, 2), (2, 1)], seed=1)
    pack = make_pack([first, second], pad_to=80)
    n1, n2 = len(first.input_ids), len(second.input_ids)
    packed = logits(debug_model, pack, images, cu_seqlens=pack["cu_seqlens"])
    alone = logits(debug_model, make_pack([second]), images[1:])
    torch.testing.assert_close(packed[n1 : n1 + n2], alone)
    # Replacing the first sample (text and image) leaves the second one bit-identical.
    other = make_pack([third, second], pad_to=80)
    n3 = len(third.input_ids)
    replaced = logits(
        debug_model,
        other,
        [random_images([(1, 1)], 5)[0], images[1]],
        cu_seqlens=other["cu_seqlens"],
    )
    torch.testing.assert_close(replaced[n3 : n3 + n2], alone)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_and_sdpa_backends_give_the_same_logits(debug_model, tok):
    first = make_sample(tok, CAPTION, [(2, 2)])
    second = make_sample(tok, [("user", "<image><image>"), ("assistant", "Two.")], [(1, 2), (2, 1)])
    pack = make_pack([first, second], pad_to=100)
    images = random_images([(2, 2), (1, 2), (2, 1)])
    sdpa = logits(debug_model, pack, images, cu_seqlens=pack["cu_seqlens"], backend="sdpa")
    flex = logits(debug_model, pack, images, cu_seqlens=pack["cu_seqlens"], backend="flex")
    torch.testing.assert_close(flex, sdpa, rtol=1e-4, atol=1e-4)


def test_image_token_count_mismatch_names_both_counts(debug_model, caption_pack):
    with pytest.raises(ImageTokenMismatch, match=r"4 <IMG_CONTEXT> tokens .* gives 6 tokens"):
        debug_model(*model_inputs(caption_pack), pixel_values=random_images([(2, 3)]))
    with pytest.raises(ImageTokenMismatch, match=r"4 <IMG_CONTEXT> tokens .* gives 0 tokens"):
        debug_model(*model_inputs(caption_pack))
    with pytest.raises(ValueError, match=r"pixel_values\[0\] has shape \(3, 48, 64\)"):
        debug_model(*model_inputs(caption_pack), pixel_values=[torch.zeros(3, 48, 64)])


def test_loss_uses_the_stored_shifted_labels(debug_model, caption_pack):
    images = random_images([(2, 2)])
    out = debug_model(
        *model_inputs(caption_pack), pixel_values=images, labels=caption_pack["labels"]
    )
    labels = caption_pack["labels"][0]
    keep = labels != -100
    assert keep.sum() > 3
    expected = F.cross_entropy(out.logits[0][keep], labels[keep])  # position i predicts labels[i]
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    grads = {n: p.grad for n, p in debug_model.named_parameters()}
    assert grads["vision_model.embeddings.patch_embedding.weight"].abs().sum() > 0
    assert grads["language_model.model.layers.0.self_attn.k_proj_hw.weight"].abs().sum() > 0
    debug_model.zero_grad(set_to_none=True)


def test_chunked_training_loss_equals_the_full_logits_loss(debug_model, caption_pack):
    """The training path (loss_weights: vocabulary projection in chunks with the gradients
    fused into the forward pass, supervised positions only) gives the full-logits loss x weight
    total, and the same gradients (float64 weights; both paths take the cross-entropy in fp32,
    the fused one its gradient as ``softmax - onehot`` rather than log-softmax's backward, so
    they agree to fp32 rounding)."""
    debug_model = copy.deepcopy(debug_model).double()
    inputs, labels = model_inputs(caption_pack), caption_pack["labels"]
    images = random_images([(2, 2)])
    sample_ids = torch.zeros_like(labels)
    weights = loss_weights(labels, sample_ids, "sample_sqrt")
    full = debug_model(*inputs, pixel_values=images, labels=labels, loss_weighting="sample_sqrt")
    (full.loss * weights.sum()).backward()
    expected = {n: p.grad.clone() for n, p in debug_model.named_parameters()}
    debug_model.zero_grad(set_to_none=True)
    with patch("neo_model.loss.LOSS_CHUNK", 3):  # several chunks, the last one short
        out = debug_model(*inputs, pixel_values=images, labels=labels, loss_weights=weights)
    assert out.logits is None and int((weights > 0).sum()) > 6
    torch.testing.assert_close(out.loss.float(), (full.loss.detach() * weights.sum()).float())
    out.loss.backward()
    for n, p in debug_model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-6)


def test_normalize_image():
    pixels = np.zeros((64, 32, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    out = normalize_image(Image.fromarray(pixels))
    assert out.shape == (3, 64, 32)
    torch.testing.assert_close(
        out[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )


def test_presets_match_the_architecture_table():
    small, large = neo_2_2b(), neo_9b()
    assert (small.num_layers, small.num_extra_layers, small.hidden_size) == (40, 12, 2048)
    assert (large.num_layers, large.num_extra_layers, large.hidden_size) == (42, 6, 4096)
    assert (small.num_attention_heads, large.num_attention_heads) == (16, 32)
    assert small.tie_word_embeddings and not large.tie_word_embeddings
    assert small.head_dim == large.head_dim == 128 and small.hw_dim == 64
    with pytest.raises(ValueError, match=r"NeoConfig.head_dim = 30: must be a multiple of 4"):
        debug().replace(head_dim=30)


def test_debug_model_learns_a_pack(tok):
    torch.manual_seed(0)
    model = NeoChatModel(debug())
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    pack = make_pack([make_sample(tok, CAPTION, [(2, 2)]) for _ in range(2)])
    images = random_images([(2, 2)] * 2)
    losses = []
    for _ in range(4):
        out = model(
            *model_inputs(pack),
            pixel_values=images,
            labels=pack["labels"],
            cu_seqlens=pack["cu_seqlens"],
            loss_weighting="sample_sqrt",
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 1.0


def test_each_image_token_is_its_32_pixel_block_in_row_major_order(debug_model):
    """The patch embedding is local: token k of a 2x3 image depends on exactly the 32x32 pixel
    block (k // 3, k % 3), so its tokens come out row by row, as the T/H/W rule numbers them."""
    embeddings = debug_model.vision_model.embeddings
    image = torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = embeddings(image)
        assert base.shape == (6, debug_model.config.hidden_size)
        for row in range(2):
            for col in range(3):
                changed = image.clone()
                changed[:, 32 * row : 32 * (row + 1), 32 * col : 32 * (col + 1)] += 1.0
                moved = (embeddings(changed) - base).abs().amax(dim=1) > 0
                assert moved.nonzero().flatten().tolist() == [3 * row + col], (row, col)


def test_patch_embedding_is_conv_gelu_2d_rope_conv_with_the_configs_vision_theta():
    """Architecture doc, section 3, with ``rope_theta_vision`` 1,000 (the released training
    script's default, unlike H/W's 10,000): so the embedding must read its own theta."""
    config = debug().replace(rope_theta_vision=1000.0)
    torch.manual_seed(0)
    embeddings = NeoVisionEmbeddings(config)
    image = torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(1))
    conv1, conv2 = embeddings.patch_embedding, embeddings.dense_embedding
    with torch.no_grad():
        features = F.gelu(F.conv2d(image[None], conv1.weight, conv1.bias, stride=16))[0]
        for theta, equal in ((1000.0, True), (config.rope_theta_hw, False)):
            rotated = vision_rope_2d(features.permute(1, 2, 0), theta).permute(2, 0, 1)
            tokens = F.conv2d(rotated[None], conv2.weight, conv2.bias, stride=2)[0]
            expected = tokens.flatten(1).T  # [6, hidden], row-major
            assert torch.allclose(embeddings(image), expected, atol=1e-5) == equal, theta
