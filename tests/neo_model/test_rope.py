"""The rotary pieces against straightforward references (complex numbers, loops, HF Qwen3)."""

from __future__ import annotations

import math

import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from neo_model.rope import apply_rope, apply_rope_interleaved, rope_cos_sin, vision_rope_2d


def test_rotate_half_rope_is_a_complex_rotation_of_split_pairs():
    """Rotate-half pairs channel i with channel i + D/2, rotated by pos * theta^(-2i/D)."""
    torch.manual_seed(0)
    dim, theta = 16, 10_000.0
    positions = torch.tensor([[0, 1, 5, 37]])
    x = torch.randn(1, 2, 4, dim, dtype=torch.float64)
    got = apply_rope(x, *rope_cos_sin(positions, dim, theta))
    half = dim // 2
    z = torch.complex(x[..., :half], x[..., half:])
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angle = positions[0, :, None].to(torch.float64) * freq
    rotated = z * torch.polar(torch.ones_like(angle), angle)
    expected = torch.cat((rotated.real, rotated.imag), dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float64


def test_t_rope_matches_transformers_qwen3():
    config = Qwen3Config(head_dim=128, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    positions = torch.tensor([[0, 3, 4, 4, 4, 5, 40_000]])
    q = torch.randn(1, 2, 7, 128)
    k = torch.randn(1, 1, 7, 128)
    cos, sin = Qwen3RotaryEmbedding(config)(q, positions)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours = rope_cos_sin(positions, 128, 1e6)
    torch.testing.assert_close(apply_rope(q, *ours), hf_q)
    torch.testing.assert_close(apply_rope(k, *ours), hf_k)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q, *rope_cos_sin(torch.tensor([[m]]), 64, 1e4))
        kn = apply_rope(k, *rope_cos_sin(torch.tensor([[n]]), 64, 1e4))
        return (qm * kn).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))
    torch.testing.assert_close(score(0, 0), (q * k).sum())


def test_interleaved_rope_matches_a_loop():
    torch.manual_seed(0)
    dim, theta = 8, 1000.0
    x = torch.randn(5, dim)
    positions = torch.tensor([0, 1, 2, 9, 30])
    got = apply_rope_interleaved(x, positions, theta)
    expected = torch.empty_like(x)
    for row, pos in enumerate(positions.tolist()):
        for i in range(dim // 2):
            angle = pos * theta ** (-2 * i / dim)
            a, b = x[row, 2 * i].item(), x[row, 2 * i + 1].item()
            expected[row, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
            expected[row, 2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
    torch.testing.assert_close(got, expected)


def test_vision_rope_rotates_first_half_by_column_and_second_half_by_row():
    torch.manual_seed(0)
    rows, cols, channels, theta = 3, 4, 16, 10_000.0
    x = torch.randn(rows, cols, channels)
    got = vision_rope_2d(x, theta)
    for r in range(rows):
        for c in range(cols):
            first = apply_rope_interleaved(x[r, c, :8], torch.tensor(c), theta)
            second = apply_rope_interleaved(x[r, c, 8:], torch.tensor(r), theta)
            torch.testing.assert_close(got[r, c], torch.cat((first, second)))
    # Patch (0, 0) is not rotated at all.
    torch.testing.assert_close(got[0, 0], x[0, 0])


# ---------------------------------------------------------------------------------------------
# Native RoPE inside the model, against a reference written from the architecture doc
# ---------------------------------------------------------------------------------------------

# <|im_start|> user \n <img> [a 2x3 image] </img> \n Describe: the doc's index rule written out by
# hand (a non-square grid, so rows and columns cannot stand in for each other).
NATIVE_IDS = [151644, 872, 198, 151670, *[151669] * 6, 151671, 198, 74785]
NATIVE_T = [0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 5, 6, 7]
NATIVE_H = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
NATIVE_W = [0, 0, 0, 0, 0, 1, 2, 0, 1, 2, 0, 0, 0]
NATIVE_IMAGE = [-1, -1, -1, -1, 0, 0, 0, 0, 0, 0, -1, -1, -1]


def doc_rope(x: torch.Tensor, position: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE of ``x [L, heads, D]``: channel ``i`` and ``i + D/2`` form one complex
    number, turned by ``position * theta^(-2i/D)`` (float64)."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    freq = theta ** (-2 * torch.arange(half, dtype=torch.float64) / x.shape[-1])
    angle = position.to(torch.float64)[:, None, None] * freq
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1)


def doc_attention(attn, x: torch.Tensor, t, h, w, config) -> torch.Tensor:
    """One native-primitive attention layer (architecture doc, sections 2 and 4) in float64:
    q/k = T part (``q_proj``/``k_proj``, QK-norm, RoPE on T with ``rope_theta``) + H part and
    W part (halves of ``q_proj_hw``/``k_proj_hw`` per head, own norms, RoPE on H resp. W with
    ``rope_theta_hw``), one dot product scaled by 1/sqrt(head_dim), GQA, causal mask plus
    bidirectional attention inside the image; ``x [L, hidden]`` -> ``[L, hidden]``."""
    d, eps = config.head_dim, config.rms_norm_eps
    p = {n: m.weight.detach().double() for n, m in attn.named_children()}
    x = x.double()

    def norm(v, weight):
        return v / (v.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight

    def native(t_proj, hw_proj, t_norm, h_norm, w_norm):
        t_part = (x @ p[t_proj].T).view(len(x), -1, d)
        hw_part = (x @ p[hw_proj].T).view(len(x), -1, d)
        h_part, w_part = hw_part[..., : d // 2], hw_part[..., d // 2 :]
        return torch.cat(
            (
                doc_rope(norm(t_part, p[t_norm]), t, config.rope_theta),
                doc_rope(norm(h_part, p[h_norm]), h, config.rope_theta_hw),
                doc_rope(norm(w_part, p[w_norm]), w, config.rope_theta_hw),
            ),
            dim=-1,
        )

    query = native("q_proj", "q_proj_hw", "q_norm", "q_norm_h", "q_norm_w")
    key = native("k_proj", "k_proj_hw", "k_norm", "k_norm_h", "k_norm_w")
    value = (x @ p["v_proj"].T).view(len(x), -1, d)
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    image = torch.tensor(NATIVE_IMAGE)
    pos = torch.arange(len(x))
    allowed = (pos[None, :] <= pos[:, None]) | ((image[:, None] >= 0) & (image[None, :] >= 0))
    scores = torch.einsum("ind,jnd->nij", query, key) / d**0.5
    probs = scores.masked_fill(~allowed, -torch.inf).softmax(dim=-1)
    out = torch.einsum("nij,jnd->ind", probs, value).reshape(len(x), -1)
    return out @ p["o_proj"].T


def test_native_rope_rotates_t_h_w_by_their_own_index_on_a_non_square_image(debug_model):
    """Every layer's attention, run inside the model on a 2x3 image, equals the doc's reference;
    with H and W (or T and H) exchanged the reference is far off, so a swap cannot pass."""
    config = debug_model.config
    ids = torch.tensor([NATIVE_IDS])
    t, h, w = (torch.tensor(v) for v in (NATIVE_T, NATIVE_H, NATIVE_W))
    images = [torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(0))]
    seen = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
        for layer in debug_model.language_model.model.layers
    ]
    try:
        with torch.no_grad():
            debug_model(ids, t[None], h[None], w[None], torch.tensor([NATIVE_IMAGE]),
                        pixel_values=images)  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == config.num_layers
    for attn, x, out in seen:
        got = out[0].double()
        expected = doc_attention(attn, x[0], t, h, w, config)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # outputs are ~0.1
        for wrong in (doc_attention(attn, x[0], t, w, h, config),
                      doc_attention(attn, x[0], h, t, w, config)):  # fmt: skip
            assert (got - wrong).abs().max() > 1e-3
