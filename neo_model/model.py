"""The NEO 1.0 model: a patch embedding and one dense decoder of native-primitive layers.

Reads like transformers' ``modeling_qwen3.py``; module names are the released checkpoint keys
(``vision_model.embeddings.*``, ``language_model.model.layers.{i}.self_attn.*`` ...). Comments
mark where NEO differs from Qwen3:

* q and k of every head carry three parts, T (``head_dim``) + H + W (``head_dim / 2`` each), each
  with its own QK-norm and RoPE (T: ``rope_theta`` on the T index; H/W: ``rope_theta_hw`` on the
  H / W index); v stays ``head_dim`` wide; one dot product with softmax scale
  ``1/sqrt(head_dim)``.
* The mask is NEO's mixed mask (``neo_model.attention``), not plain causal.
* ``<IMG_CONTEXT>`` embeddings are replaced by the patch embedding's output, in order.

RoPE lives in :mod:`neo_model.rope`, the generation cache in :mod:`neo_model.cache`, the loss
in :mod:`neo_model.loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.checkpoint import checkpoint

from neo_data.encoding.positions import ImageTokenMismatch
from neo_data.encoding.tokens import IMG_CONTEXT_ID
from neo_model.attention import AttentionMask, Backend, attend, build_mask, stack_sample_ids
from neo_model.cache import KVCache
from neo_model.config import NeoConfig
from neo_model.loss import LossWeighting, causal_lm_loss, chunked_token_loss
from neo_model.rope import NativeRope, apply_rope, text_run_positions, vision_rope_2d

# ---------------------------------------------------------------------------------------------
# Language model
# ---------------------------------------------------------------------------------------------


class NeoRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class NeoMLP(nn.Module):
    def __init__(self, config: NeoConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class NeoAttention(nn.Module):
    """Qwen3 attention plus the H/W query/key parts of NEO's native primitive."""

    def __init__(self, config: NeoConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        hidden, heads, kv_heads = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
        )
        eps = config.rms_norm_eps
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.q_norm = NeoRMSNorm(self.head_dim, eps)
        self.k_norm = NeoRMSNorm(self.head_dim, eps)
        # NEO: per head, head_dim more query/key channels: first half H, second half W.
        self.q_proj_hw = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj_hw = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.q_norm_h = NeoRMSNorm(config.hw_dim, eps)
        self.q_norm_w = NeoRMSNorm(config.hw_dim, eps)
        self.k_norm_h = NeoRMSNorm(config.hw_dim, eps)
        self.k_norm_w = NeoRMSNorm(config.hw_dim, eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: NativeRope,
        mask: AttentionMask,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``hidden_states [B, L, hidden]`` -> ``[B, L, hidden]``."""
        batch, length, _ = hidden_states.shape
        heads_shape = (batch, length, -1, self.head_dim)

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, n*D] -> [B, n, L, D]
            return x.view(heads_shape).transpose(1, 2)

        q_t = self.q_norm(heads(self.q_proj(hidden_states)))
        k_t = self.k_norm(heads(self.k_proj(hidden_states)))
        q_h, q_w = heads(self.q_proj_hw(hidden_states)).chunk(2, dim=-1)
        k_h, k_w = heads(self.k_proj_hw(hidden_states)).chunk(2, dim=-1)
        value = heads(self.v_proj(hidden_states))

        query = torch.cat(
            (
                apply_rope(q_t, *rope.t),
                apply_rope(self.q_norm_h(q_h), *rope.h),
                apply_rope(self.q_norm_w(q_w), *rope.w),
            ),
            dim=-1,
        )
        key = torch.cat(
            (
                apply_rope(k_t, *rope.t),
                apply_rope(self.k_norm_h(k_h), *rope.h),
                apply_rope(self.k_norm_w(k_w), *rope.w),
            ),
            dim=-1,
        )
        if cache is not None:
            key, value = cache.update(self.layer_idx, key, value)

        # NEO: q/k are 2 * head_dim wide, but the scale stays the LLM's 1/sqrt(head_dim).
        out = attend(query, key, value, mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class NeoDecoderLayer(nn.Module):
    def __init__(self, config: NeoConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = NeoAttention(config, layer_idx)
        self.mlp = NeoMLP(config)
        self.input_layernorm = NeoRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = NeoRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: NativeRope,
        mask: AttentionMask,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(self.input_layernorm(hidden_states), rope, mask, cache)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class NeoModel(nn.Module):
    """Embedding, the flat layer list (pre-Buffer, then post-LLM), final norm."""

    def __init__(self, config: NeoConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(NeoDecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = NeoRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        rope: NativeRope,
        mask: AttentionMask,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``inputs_embeds [B, L, hidden]`` -> normed hidden states ``[B, L, hidden]``."""
        hidden_states = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = checkpoint(
                    layer, hidden_states, rope, mask, cache, use_reentrant=False
                )
            else:
                hidden_states = layer(hidden_states, rope, mask, cache)
        return self.norm(hidden_states)


class NeoLanguageModel(nn.Module):
    """The decoder and its head (the released ``language_model``)."""

    def __init__(self, config: NeoConfig) -> None:
        super().__init__()
        self.model = NeoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_word_embeddings = config.tie_word_embeddings
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make ``lm_head`` the embedding matrix when the config ties them (after a device move
        that re-creates parameters, call again)."""
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight


# ---------------------------------------------------------------------------------------------
# Patch embedding
# ---------------------------------------------------------------------------------------------


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """An RGB image (already at its smart-resize size) as ``[3, H, W]`` float32, ImageNet-normalised.

    A uint8 torch tensor ``[H, W, 3]`` is normalised on its own device: the trainer copies the
    loader's uint8 pixels to the GPU (a quarter of float32's bytes) and normalises them there,
    with the same float32 operations, so the values equal the CPU path's."""
    if isinstance(image, torch.Tensor):
        pixels = image
    else:
        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if array.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 image [H, W, 3], got {array.dtype} {array.shape}"
            )
        pixels = torch.from_numpy(array.copy())
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != torch.uint8:
        raise ValueError(
            f"expected an RGB uint8 image [H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}"
        )
    pixels = pixels.permute(2, 0, 1).to(torch.float32) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return (pixels - mean) / std


class NeoVisionEmbeddings(nn.Module):
    """Conv 16/16 -> GELU -> 2D RoPE on the features -> Conv 2/2: one token per 32x32 pixels."""

    def __init__(self, config: NeoConfig) -> None:
        super().__init__()
        self.rope_theta = config.rope_theta_vision
        self.factor = config.image_factor
        self.patch_embedding = nn.Conv2d(
            3, config.vision_hidden, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.dense_embedding = nn.Conv2d(
            config.vision_hidden,
            config.hidden_size,
            kernel_size=config.downsample,
            stride=config.downsample,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One image ``[3, H, W]`` -> its tokens ``[H/32 * W/32, hidden]``, row-major."""
        dtype = self.patch_embedding.weight.dtype
        patches = F.gelu(self.patch_embedding(pixel_values[None].to(dtype)))[0]  # [C, H/16, W/16]
        patches = vision_rope_2d(patches.permute(1, 2, 0), self.rope_theta).to(dtype)
        tokens = self.dense_embedding(patches.permute(2, 0, 1)[None])[0]  # [hidden, H/32, W/32]
        return tokens.flatten(1).transpose(0, 1)


class NeoVisionModel(nn.Module):
    def __init__(self, config: NeoConfig) -> None:
        super().__init__()
        self.embeddings = NeoVisionEmbeddings(config)

    def forward(self, pixel_values: Sequence[torch.Tensor]) -> torch.Tensor:
        """Images ``[3, H, W]`` (H, W multiples of 32) -> all their tokens ``[N, hidden]``, in order."""
        factor = self.embeddings.factor
        for i, image in enumerate(pixel_values):
            if (
                image.ndim != 3
                or image.shape[0] != 3
                or image.shape[1] % factor
                or image.shape[2] % factor
            ):
                raise ValueError(
                    f"pixel_values[{i}] has shape {tuple(image.shape)}: expected [3, H, W] with "
                    f"H and W multiples of {factor}"
                )
        tokens = [self.embeddings(image) for image in pixel_values]
        if not tokens:
            weight = self.embeddings.dense_embedding.weight
            # Empty, yet tied to every weight (zero gradients): data-parallel ranks then run
            # the same FSDP all-gathers and gradient reductions whether or not they saw images.
            anchor = sum(p.sum() for p in self.parameters()) * 0.0
            return weight.new_zeros(0, weight.shape[0]) + anchor
        return torch.cat(tokens)


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


@dataclass
class NeoOutput:
    logits: torch.Tensor | None  # [B, L, vocab]; None on the training path (loss_weights)
    loss: torch.Tensor | None = None  # scalar, when labels were given


class NeoChatModel(nn.Module):
    """NEO: patch embedding + language model, in the released checkpoint's module layout."""

    def __init__(self, config: NeoConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = NeoVisionModel(config)
        self.language_model = NeoLanguageModel(config)
        self.init_language_weights()

    def init_language_weights(self, std: float = 0.02) -> None:
        """Qwen3's initialisation: every linear and the embedding N(0, std); norms stay one.

        The patch-embedding convs keep PyTorch's default initialisation.
        """
        for module in self.language_model.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(
        self,
        input_ids: torch.Tensor,
        t_index: torch.Tensor,
        h_index: torch.Tensor,
        w_index: torch.Tensor,
        image_ordinal: torch.Tensor,
        *,
        sample_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | Sequence[torch.Tensor] | None = None,
        pixel_values: Sequence[torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        loss_weighting: LossWeighting = "token",
        backend: Backend | None = None,
        cache: KVCache | None = None,
        loss_weights: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> NeoOutput:
        """Logits (and loss) for ``[B, L]`` tokens, e.g. the columns of packed shard rows.

        Args:
            input_ids, t_index, h_index, w_index, image_ordinal: ``[B, L]``, as in a packed shard
                row (``image_ordinal`` -1 for non-image tokens).
            sample_ids: ``[B, L]`` packed-sample id per token (padding: -1). Or ``cu_seqlens``:
                one offsets tensor per row (a 1-D tensor for ``B = 1``); tokens past its end are
                padding. Neither: every row is one sample.
            pixel_values: normalised images ``[3, H, W]``, in order of their ``<IMG_CONTEXT>``
                runs (row by row, then by ``image_ordinal``).
            labels: ``[B, L]`` next-token targets as stored (already shifted: position ``i``
                must predict ``labels[i]``; -100 = none).
            loss_weighting: ``"token"`` (every supervised token counts once) or
                ``"sample_sqrt"`` (each sample's tokens weighted 1/sqrt(its supervised count),
                as the released training code does); the loss is the weighted mean.
            backend: ``"sdpa"``, ``"sdpa_segments"`` or ``"flex"``; default flex on CUDA,
                sdpa_segments elsewhere (either way sdpa with a KV cache past the prompt).
            cache: a :class:`KVCache` to extend (generation); positions continue after it.
            loss_weights: ``[B, L]`` per-token weights (:func:`neo_model.loss.loss_weights`)
                with ``labels``: the training path. Returns ``loss = sum_i w_i CE_i`` (not
                divided) and no logits; the vocabulary projection runs only at weighted
                positions, in chunks whose gradients are made in the forward pass (a fused
                linear cross-entropy, :mod:`neo_model.loss`), so ``[tokens, vocab]`` logits
                never exist at once (150k-word vocabularies dominate memory otherwise).
            logits_to_keep: > 0: logits of the last ``logits_to_keep`` positions only,
                ``[B, logits_to_keep, vocab]`` (as in transformers; prefill needs one, not a
                ``[B, L, vocab]`` tensor); 0: every position. Not with ``labels``.
        """
        if sample_ids is not None and cu_seqlens is not None:
            raise ValueError("pass sample_ids or cu_seqlens, not both")
        if sample_ids is None:
            if cu_seqlens is not None:
                sample_ids = stack_sample_ids(cu_seqlens, input_ids.shape[1])
            else:
                sample_ids = torch.zeros_like(input_ids, dtype=torch.long)
        sample_ids = sample_ids.to(input_ids.device)
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep drops positions the loss needs; pass labels or it")
        if backend is None:
            prompt = cache is None or cache.length == 0
            backend = "flex" if input_ids.device.type == "cuda" and prompt else "sdpa_segments"

        inputs_embeds = self.embed(input_ids, pixel_values)
        q_offset = 0
        mask_ids, mask_ordinal = sample_ids, image_ordinal
        if cache is not None:
            q_offset = cache.length
            mask_ids, mask_ordinal = cache.extend_tokens(sample_ids, image_ordinal)
        if self.config.rope == "1d":  # ablation: images as a text run
            t_index, h_index, w_index = text_run_positions(t_index, mask_ids, mask_ordinal)
        rope = NativeRope.build(self.config, t_index, h_index, w_index)
        if self.config.attention == "causal":  # ablation: no image is bidirectional
            mask_ordinal = torch.full_like(mask_ordinal, -1)
        mask = build_mask(mask_ids, mask_ordinal, backend, q_offset)

        hidden_states = self.language_model.model(inputs_embeds, rope, mask, cache)
        if loss_weights is not None:
            if labels is None:
                raise ValueError("loss_weights needs labels")
            at = loss_weights > 0
            loss = chunked_token_loss(
                hidden_states[at],
                self.language_model.lm_head.weight,
                labels[at].long(),
                loss_weights[at].float(),
            )
            return NeoOutput(logits=None, loss=loss)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.language_model.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, sample_ids, loss_weighting)
        return NeoOutput(logits=logits, loss=loss)

    def embed(
        self, input_ids: torch.Tensor, pixel_values: Sequence[torch.Tensor] | None
    ) -> torch.Tensor:
        """Token embeddings ``[B, L, hidden]`` with ``<IMG_CONTEXT>`` rows replaced by image tokens."""
        inputs_embeds = self.language_model.model.embed_tokens(input_ids.long())
        is_image = input_ids == IMG_CONTEXT_ID
        num_image_tokens = int(is_image.sum())
        if num_image_tokens == 0 and not pixel_values and not self.training:
            return inputs_embeds
        image_embeds = self.vision_model(pixel_values or [])  # in training: even for no image
        if image_embeds.shape[0] != num_image_tokens:
            raise ImageTokenMismatch(
                f"{num_image_tokens} <IMG_CONTEXT> tokens in input_ids but the patch embedding "
                f"gives {image_embeds.shape[0]} tokens for {len(pixel_values or [])} images"
            )
        return inputs_embeds.masked_scatter(
            is_image[..., None], image_embeds.to(inputs_embeds.dtype)
        )
