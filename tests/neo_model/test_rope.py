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
