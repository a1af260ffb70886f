"""Model FLOPs of a NEO training step, three ways (for MFU).

Per pack of ``T`` tokens, ``I`` of them image tokens::

    F = c_dense * T  +  6 * P * I  +  6 * n_layers * n_heads * (d_qk + d_v) * A

* ``N``: weights of every ``nn.Linear`` of the decoder layers plus ``lm_head`` (embedding
  lookups, norms, RoPE and softmax are not counted); a tied head counts once.
* ``P``: patch-embedding weight uses per image token (conv1 on ``downsample**2`` patches, conv2 once).
* Attention: per (query, key) pair and head, ``2 * d_qk`` FLOPs for ``q.k`` and ``2 * d_v`` for
  ``p.v`` forward, NEO's ``d_qk = 2 * head_dim`` (T|H|W) and ``d_v = head_dim``; x3 with backward.
* ``A``, the attended pairs:
  - ``standard``: the usual convention, the row as one causal sequence, ``T (T + 1) / 2``;
  - ``mask_aware``: the pairs NEO's mask allows in a packed row, ``sum_samples n (n + 1) / 2 +
    sum_images g (g - 1) / 2`` (each image's bidirectional block adds its upper triangle).
* ``c_dense``: ``6 N`` (forward 2N, input gradients 2N, weight gradients 2N); with frozen
  weights (stage 1, ``frozen_corrected``) the weight gradients of frozen matrices are not
  computed: ``4 N + 2 N_trainable`` (input gradients still flow through the frozen post-LLM
  back to the pre-Buffer).

Activation recomputation is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FlopCount:
    dense: int  # N
    dense_trainable: int  # the part of N with requires_grad
    patch: int  # P
    attn: int  # n_layers * n_heads * (d_qk + d_v)

    @classmethod
    def of(cls, model: nn.Module, config) -> FlopCount:
        decoder = model.language_model.model.layers
        linears = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
        linears.append(model.language_model.lm_head)
        dense = sum(m.weight.numel() for m in linears)
        trainable = sum(m.weight.numel() for m in linears if m.weight.requires_grad)
        emb = model.vision_model.embeddings
        patch = emb.patch_embedding.weight.numel() * config.downsample**2
        patch += emb.dense_embedding.weight.numel()
        attn = config.num_layers * config.num_attention_heads * 3 * config.head_dim
        return cls(dense, trainable, patch, attn)

    def step(self, sample_lengths: Sequence[int], image_sizes: Sequence[int]) -> dict[str, int]:
        """FLOPs of forward + backward over one packed row: ``standard``, ``mask_aware``,
        ``frozen_corrected`` (mask-aware pairs, frozen weights' gradients not counted)."""
        tokens = sum(sample_lengths)
        images = sum(image_sizes)
        causal_pairs = tokens * (tokens + 1) // 2
        neo_pairs = sum(n * (n + 1) // 2 for n in sample_lengths)
        neo_pairs += sum(g * (g - 1) // 2 for g in image_sizes)
        patch = 6 * self.patch * images
        return {
            "standard": 6 * self.dense * tokens + patch + 6 * self.attn * causal_pairs,
            "mask_aware": 6 * self.dense * tokens + patch + 6 * self.attn * neo_pairs,
            "frozen_corrected": (4 * self.dense + 2 * self.dense_trainable) * tokens
            + patch
            + 6 * self.attn * neo_pairs,
        }
