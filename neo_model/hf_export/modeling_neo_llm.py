"""NEO's language model (remote code of a neo export; see ``modeling_neo_chat``): Qwen3
layers with the native primitive's H/W query/key parts, NEO's mixed mask, and generation with
T/H/W indexes through transformers' ``GenerationMixin``.

Standalone: torch and transformers only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_neo_chat import NEOChatConfig, NEOLLMConfig
from .modeling_neo_vit import inverse_frequencies

try:  # transformers 5: initialisers that skip tensors already loaded from the checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4
    from torch.nn import init

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
# The generation cache's keyword: "cache" from transformers 5.2x, "past_key_values" before.
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# ---------------------------------------------------------------------------------------------
# RoPE (fp32)
# ---------------------------------------------------------------------------------------------


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, ...]:
    """Rotate-half tables for ``positions [B, L]``: cos and sin ``[B, 1, L, dim]``, fp32."""
    freqs = positions.to(torch.float32)[..., None] * inverse_frequencies(
        dim, theta, positions.device
    )
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, L, D]`` in fp32; the result in x's dtype."""
    x32 = x.to(torch.float32)
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Language model
# ---------------------------------------------------------------------------------------------


class NEORMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class NEOMLP(nn.Module):
    def __init__(self, config: NEOLLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class NEOAttention(nn.Module):
    """Qwen3 attention plus the H/W query/key parts of NEO's native primitive."""

    def __init__(self, config: NEOLLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = d = config.head_dim
        self.groups = config.num_attention_heads // config.num_key_value_heads
        hidden, heads, kv = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
        )
        eps = config.rms_norm_eps
        self.q_proj = nn.Linear(hidden, heads * d, bias=False)
        self.k_proj = nn.Linear(hidden, kv * d, bias=False)
        self.v_proj = nn.Linear(hidden, kv * d, bias=False)
        self.o_proj = nn.Linear(heads * d, hidden, bias=False)
        self.q_norm = NEORMSNorm(d, eps)
        self.k_norm = NEORMSNorm(d, eps)
        # NEO: per head, head_dim more query/key channels: first half H, second half W.
        self.q_proj_hw = nn.Linear(hidden, heads * d, bias=False)
        self.k_proj_hw = nn.Linear(hidden, kv * d, bias=False)
        self.q_norm_h = NEORMSNorm(d // 2, eps)
        self.q_norm_w = NEORMSNorm(d // 2, eps)
        self.k_norm_h = NEORMSNorm(d // 2, eps)
        self.k_norm_w = NEORMSNorm(d // 2, eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: tuple[tuple[torch.Tensor, torch.Tensor], ...],
        mask: torch.Tensor | None,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, n*D] -> [B, n, L, D]
            return x.view(batch, length, -1, self.head_dim).transpose(1, 2)

        (cos_t, sin_t), (cos_h, sin_h), (cos_w, sin_w) = rope
        q_h, q_w = heads(self.q_proj_hw(hidden_states)).chunk(2, dim=-1)
        k_h, k_w = heads(self.k_proj_hw(hidden_states)).chunk(2, dim=-1)
        query = torch.cat(
            (
                apply_rope(self.q_norm(heads(self.q_proj(hidden_states))), cos_t, sin_t),
                apply_rope(self.q_norm_h(q_h), cos_h, sin_h),
                apply_rope(self.q_norm_w(q_w), cos_w, sin_w),
            ),
            dim=-1,
        )
        key = torch.cat(
            (
                apply_rope(self.k_norm(heads(self.k_proj(hidden_states))), cos_t, sin_t),
                apply_rope(self.k_norm_h(k_h), cos_h, sin_h),
                apply_rope(self.k_norm_w(k_w), cos_w, sin_w),
            ),
            dim=-1,
        )
        value = heads(self.v_proj(hidden_states))
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        key = key.repeat_interleave(self.groups, dim=1)
        value = value.repeat_interleave(self.groups, dim=1)
        # NEO: q/k are 2 * head_dim wide, but the scale stays the LLM's 1/sqrt(head_dim).
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=self.head_dim**-0.5
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class NEODecoderLayer(nn.Module):
    def __init__(self, config: NEOLLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = NEOAttention(config, layer_idx)
        self.mlp = NEOMLP(config)
        self.input_layernorm = NEORMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = NEORMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, rope, mask, past_key_values=None) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(
            self.input_layernorm(hidden_states), rope, mask, past_key_values
        )
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NEOModel(nn.Module):
    """Embedding, the flat layer list (pre-Buffer, then post-LLM), final norm."""

    def __init__(self, config: NEOLLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            NEODecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = NEORMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, inputs_embeds, indexes, attention_mask=None, past_key_values=None):
        """``inputs_embeds [B, L, hidden]``, ``indexes [3, B, L]`` (T, H, W) -> ``[B, L, hidden]``."""
        c = self.config
        hw = c.head_dim // 2
        rope = (
            rope_cos_sin(indexes[0], c.head_dim, c.rope_theta),
            rope_cos_sin(indexes[1], hw, c.rope_theta_hw),
            rope_cos_sin(indexes[2], hw, c.rope_theta_hw),
        )
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        mask = neo_mask(indexes[0], past, attention_mask)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, rope, mask, past_key_values)
        return self.norm(hidden_states)


def neo_mask(t_index: torch.Tensor, past: int, attention_mask: torch.Tensor | None):
    """Boolean ``[B, 1, L, past + L]`` mask (True = visible) for ``L`` new tokens after ``past``
    cached ones: every cached key, and new key j for new query i when ``T[j] <= T[i]`` (causal,
    bidirectional inside an image). ``attention_mask [B, past + L]`` (0 = padding) hides keys.
    None when everything is visible (one new token, no padding)."""
    batch, length = t_index.shape
    if length == 1 and (attention_mask is None or bool(attention_mask.all())):
        return None
    new = t_index[:, None, :] <= t_index[:, :, None]  # [B, L(query), L(key)]
    old = new.new_ones(batch, length, past)
    mask = torch.cat((old, new), dim=-1)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, -mask.shape[-1] :].bool()
        mask[..., past:] |= torch.eye(length, dtype=torch.bool, device=mask.device)  # no empty row
    return mask[:, None]


class NEOPreTrainedModel(PreTrainedModel):
    config_class = NEOChatConfig
    base_model_prefix = "language_model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["NEOVisionModel", "NEODecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Qwen3's initialisation (only for tensors the checkpoint does not have)."""
        if isinstance(module, nn.Linear | nn.Embedding | nn.Conv2d):
            init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, NEORMSNorm):
            init.ones_(module.weight)


class NEOForCausalLM(NEOPreTrainedModel, GenerationMixin):
    """The released ``language_model``: decoder + ``lm_head``, generating with T/H/W indexes."""

    config_class = NEOLLMConfig
    base_model_prefix = "model"
    _tied_weights_keys = (
        {"lm_head.weight": "model.embed_tokens.weight"} if _TRANSFORMERS_5 else ["lm_head.weight"]
    )

    def __init__(self, config: NEOLLMConfig) -> None:
        super().__init__(config)
        self.model = NEOModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        indexes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits for ``[B, L]`` tokens (or embeddings) at ``indexes [3, B, L]`` (T, H, W);
        without indexes, a text-only run: T counts on from the cache, H = W = 0. The cache
        comes as ``cache`` or ``past_key_values`` (the transformers version's name)."""
        past_key_values = kwargs.pop("cache", past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        if indexes is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            batch, length = inputs_embeds.shape[:2]
            t = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, -1)
            indexes = torch.stack((t, torch.zeros_like(t), torch.zeros_like(t)))
        hidden_states = self.model(inputs_embeds, indexes, attention_mask, past_key_values)
        logits = self.lm_head(
            hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
        )
        return CausalLMOutputWithPast(logits=logits, **{CACHE_KEY: past_key_values})

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        indexes: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The prompt (embeddings, its indexes) on the first step; then the last token at
        T = (largest prompt T) + 1 + (tokens generated before it), H = W = 0. Without indexes
        (a text-only prompt of ids), T is the position."""
        past_key_values = kwargs.pop("cache", past_key_values)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        inputs: dict[str, Any] = {
            CACHE_KEY: past_key_values,
            "attention_mask": attention_mask,
            "use_cache": True,
            "logits_to_keep": 1,
        }
        if past == 0:
            if inputs_embeds is not None:
                inputs.update(inputs_embeds=inputs_embeds, indexes=indexes)
            else:
                inputs.update(input_ids=input_ids, indexes=indexes)
            return inputs
        if indexes is None:  # text only: T is the position
            t = torch.full((input_ids.shape[0], 1), past, device=input_ids.device)
        else:
            t_next = indexes[0].max(dim=-1).values + 1 + past - indexes.shape[-1]
            t = t_next.reshape(-1, 1).expand(input_ids.shape[0], 1)
        zeros = torch.zeros_like(t)
        inputs.update(input_ids=input_ids[:, -1:], indexes=torch.stack((t, zeros, zeros)))
        return inputs
