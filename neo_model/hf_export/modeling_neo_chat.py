"""NEO 1.0 as a Hugging Face model (remote code, ``trust_remote_code``), written by ``neo``.

Standalone: imports only ``torch``, ``transformers`` and its configuration module, so a neo
export works in an evaluation environment (VLMEvalKit's ``NEOChat`` wrapper) without ``neo``.
Module names are the released checkpoint keys (``vision_model.embeddings.*``,
``language_model.model.layers.{i}.self_attn.*``, ``language_model.lm_head``); the entry points
are those of the released ``NEOChatModel``: ``chat(tokenizer, pixel_values, question,
generation_config, history=None, return_history=False, grid_hw=None, ...)`` and
``generate(pixel_values, input_ids, grid_hw, ...)``.

Inputs, as the released preprocessing makes them (``image_processing_neo_chat``): every image
smart-resized to multiples of 32 px, ImageNet-normalised, cut into 16x16 patches in row-major
order, each patch flattened channel-major -> ``pixel_values [sum(h*w), 3*16*16]`` and
``grid_hw [images, 2]`` (rows, columns of 16-px patches).

What differs from Qwen3 (see the project's architecture notes):

* per head, q and k are ``head_dim`` (T) + ``head_dim/2`` (H) + ``head_dim/2`` (W) wide, each
  part with its own QK-norm and rotate-half RoPE (T: ``rope_theta`` on the T index; H/W:
  ``rope_theta_hw`` on the row / column index); v stays ``head_dim``; one dot product with
  scale ``1/sqrt(head_dim)``;
* positions: every token but ``<IMG_CONTEXT>`` advances T by one, all tokens of an image share
  the T after its ``<img>``; image tokens carry their row / column, all others H = W = 0;
  generated tokens continue T after the largest prompt T;
* the mask: causal, and bidirectional among the tokens of one image -- key j is visible to
  query i when ``T[j] <= T[i]`` (tokens of equal T are exactly one image's tokens);
* ``<IMG_CONTEXT>`` embeddings are replaced by the patch embedding's tokens, in order.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_neo_chat import NEOChatConfig, NEOLLMConfig, NEOVisionConfig

try:  # transformers 5: initialisers that skip tensors already loaded from the checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4
    from torch.nn import init

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
# The generation cache's keyword: "cache" from transformers 5.2x, "past_key_values" before.
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
IMG_CONTEXT = "<IMG_CONTEXT>"
IMG_START = "<img>"
IMG_END = "</img>"

# ---------------------------------------------------------------------------------------------
# RoPE (fp32)
# ---------------------------------------------------------------------------------------------


def _inv_freq(dim: int, theta: float, device: torch.device) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim
    return 1.0 / (theta**exponents)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, ...]:
    """Rotate-half tables for ``positions [B, L]``: cos and sin ``[B, 1, L, dim]``, fp32."""
    freqs = positions.to(torch.float32)[..., None] * _inv_freq(dim, theta, positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, L, D]`` in fp32; the result in x's dtype."""
    x32 = x.to(torch.float32)
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


def _rope_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Adjacent-pair rotation of ``x [N, D]`` by ``positions [N]`` (fp32)."""
    angles = positions.to(torch.float32)[:, None] * _inv_freq(x.shape[-1], theta, x.device)
    cos, sin = angles.cos(), angles.sin()
    x32 = x.to(torch.float32)
    even, odd = x32[:, 0::2], x32[:, 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def grid_positions(grid_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every cell of images with ``grid_hw [images, 2]`` cells, row-major."""
    rows, cols = [], []
    for h, w in grid_hw.tolist():
        idx = torch.arange(h * w, device=grid_hw.device)
        rows.append(idx // w)
        cols.append(idx % w)
    return torch.cat(rows), torch.cat(cols)


# ---------------------------------------------------------------------------------------------
# Patch embedding
# ---------------------------------------------------------------------------------------------


class NEOVisionEmbeddings(nn.Module):
    """Conv 16/16 -> GELU -> 2D RoPE (first half of the channels by column, second by row)
    -> conv 2/2: one token per 32x32 pixels."""

    def __init__(self, config: NEOVisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.merge = round(1 / config.downsample_ratio)
        self.rope_theta = config.rope_theta_vision
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.dense_embedding = nn.Conv2d(
            config.hidden_size, config.llm_hidden_size, self.merge, stride=self.merge
        )

    def forward(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor) -> torch.Tensor:
        """``pixel_values [sum(h*w), 3*p*p]``, ``grid_hw [images, 2]`` -> tokens
        ``[sum(h*w) / merge^2, llm_hidden]``, image by image, row-major."""
        dtype = self.patch_embedding.weight.dtype
        patches = pixel_values.to(dtype).view(-1, 3, self.patch_size, self.patch_size)
        features = F.gelu(self.patch_embedding(patches)).flatten(1)  # [N, C]
        if features.shape[0] != int(grid_hw.prod(-1).sum()):
            raise ValueError(
                f"pixel_values has {features.shape[0]} patches, grid_hw {grid_hw.tolist()} "
                f"says {int(grid_hw.prod(-1).sum())}"
            )
        rows, cols = grid_positions(grid_hw)
        by_col, by_row = features.chunk(2, dim=-1)
        features = torch.cat(
            (_rope_pairs(by_col, cols, self.rope_theta), _rope_pairs(by_row, rows, self.rope_theta)),
            dim=-1,
        ).to(dtype)
        tokens, start = [], 0
        for h, w in grid_hw.tolist():
            image = features[start : start + h * w].view(h, w, -1).permute(2, 0, 1)[None]
            tokens.append(self.dense_embedding(image)[0].flatten(1).transpose(0, 1))
            start += h * w
        return torch.cat(tokens)


class NEOVisionModel(nn.Module):
    def __init__(self, config: NEOVisionConfig) -> None:
        super().__init__()
        self.embeddings = NEOVisionEmbeddings(config)

    def forward(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor) -> torch.Tensor:
        return self.embeddings(pixel_values, grid_hw)


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
        hidden, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
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
        logits = self.lm_head(hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states)
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
        T = (largest prompt T) + 1 + (tokens generated before it), H = W = 0."""
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
        prompt_length = indexes.shape[-1] if indexes is not None else past
        t_max = indexes[0].max(dim=-1).values if indexes is not None else past - 1
        t = (t_max + 1 + past - prompt_length).reshape(-1, 1).expand(input_ids.shape[0], 1)
        zeros = torch.zeros_like(t)
        inputs.update(input_ids=input_ids[:, -1:], indexes=torch.stack((t, zeros, zeros)))
        return inputs


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


class NEOChatModel(NEOPreTrainedModel, GenerationMixin):
    """NEO: patch embedding + language model, with the released ``chat`` and ``generate``."""

    main_input_name = "input_ids"

    def __init__(self, config: NEOChatConfig) -> None:
        super().__init__(config)
        self.patch_size = config.vision_config.patch_size
        self.downsample_ratio = config.downsample_ratio
        self.template = config.template
        self.vision_model = NEOVisionModel(config.vision_config)
        self.language_model = NEOForCausalLM(config.llm_config)
        self.img_context_token_id = config.img_context_token_id
        self.img_start_token_id = config.img_start_token_id
        self.system_message = ""  # VLMEvalKit sets it before chat(); empty: no system turn
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_thw_indexes(self, input_ids: torch.Tensor, grid_hw: torch.Tensor | None):
        """``[3, L]`` T, H, W indexes of one token row ``input_ids [L]`` whose images have
        ``grid_hw`` 16-px patches (each image token covers ``1/downsample_ratio`` squared)."""
        is_image = input_ids == self.img_context_token_id
        after_start = torch.zeros_like(input_ids)
        after_start[1:] = (input_ids[:-1] == self.img_start_token_id).long()
        t = (after_start + (~is_image).long()).cumsum(0) - 1
        h, w = torch.zeros_like(t), torch.zeros_like(t)
        if bool(is_image.any()):
            merge = round(1 / self.downsample_ratio)
            rows, cols = grid_positions(grid_hw.to(input_ids.device) // merge)
            if rows.numel() != int(is_image.sum()):
                raise ValueError(
                    f"{int(is_image.sum())} {IMG_CONTEXT} tokens but grid_hw {grid_hw.tolist()} "
                    f"gives {rows.numel()} image tokens"
                )
            h[is_image], w[is_image] = rows.to(t.dtype), cols.to(t.dtype)
        return torch.stack((t, h, w))

    def embed(self, input_ids, pixel_values=None, grid_hw=None, visual_features=None):
        """Token embeddings ``[B, L, hidden]`` with ``<IMG_CONTEXT>`` rows replaced by image tokens."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.img_context_token_id
        if pixel_values is None and visual_features is None:
            if bool(is_image.any()):
                raise ValueError(f"input_ids has {IMG_CONTEXT} tokens but no pixel_values")
            return embeds
        if visual_features is None:
            visual_features = self.vision_model(pixel_values, grid_hw)
        if visual_features.shape[0] != int(is_image.sum()):
            raise ValueError(
                f"{int(is_image.sum())} {IMG_CONTEXT} tokens in input_ids but the images give "
                f"{visual_features.shape[0]} tokens"
            )
        return embeds.masked_scatter(is_image[..., None], visual_features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        grid_hw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        indexes: torch.LongTensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits of ``input_ids [B, L]`` with their images (``indexes [3, B, L]`` computed from
        ``input_ids`` and ``grid_hw`` when not given)."""
        if indexes is None:
            indexes = torch.stack(
                [self.get_thw_indexes(row, grid_hw) for row in input_ids], dim=1
            )
        embeds = self.embed(input_ids, pixel_values, grid_hw)
        if past_key_values is not None:
            kwargs[CACHE_KEY] = past_key_values
        return self.language_model(
            inputs_embeds=embeds, indexes=indexes, attention_mask=attention_mask, **kwargs
        )

    def chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict,
        history: list[tuple[str, str]] | None = None,
        return_history: bool = False,
        grid_hw: torch.Tensor | None = None,
        IMG_START_TOKEN: str = IMG_START,  # the released keyword names
        IMG_END_TOKEN: str = IMG_END,
        IMG_CONTEXT_TOKEN: str = IMG_CONTEXT,
        verbose: bool = False,
    ):
        """Answer ``question`` (``<image>`` placeholders; one image and none: put in front) after
        ``history`` ``[(question, answer)]``. ``pixel_values`` / ``grid_hw`` hold every image of
        the conversation, history first. Returns the answer (and the extended history)."""
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        history = [] if history is None else list(history)
        query = "".join(
            f"<|im_start|>{role}\n{text}<|im_end|>\n"
            for q, a in history
            for role, text in (("user", q), ("assistant", a))
        )
        if self.system_message:
            query = f"<|im_start|>system\n{self.system_message}<|im_end|>\n" + query
        query += f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        images = 0 if grid_hw is None else grid_hw.shape[0]
        if query.count("<image>") != images:
            raise ValueError(f"{query.count('<image>')} <image> placeholders but {images} images")
        for i in range(images):
            n = int(grid_hw[i, 0] * grid_hw[i, 1] * self.downsample_ratio**2)
            query = query.replace("<image>", IMG_START_TOKEN + IMG_CONTEXT_TOKEN * n + IMG_END_TOKEN, 1)
        input_ids = tokenizer(query, return_tensors="pt")["input_ids"].to(self.device)
        config = dict(generation_config)
        config["eos_token_id"] = tokenizer.convert_tokens_to_ids("<|im_end|>")
        output = self.generate(
            pixel_values=pixel_values, input_ids=input_ids, grid_hw=grid_hw, **config
        )
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        response = response.split("<|im_end|>")[0].strip()
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN, ""), response)
        history.append((question, response))
        return (response, history) if return_history else response

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        grid_hw: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        visual_features: torch.FloatTensor | None = None,
        generation_config: GenerationConfig | None = None,
        output_hidden_states: bool | None = None,
        **generate_kwargs: Any,
    ) -> torch.LongTensor:
        """New tokens ``[1, n]`` after the prompt ``input_ids [1, L]`` with its images (HF
        generation: greedy, sampling, ``max_new_tokens``, ``eos_token_id`` ... as keywords).
        ``generation_config`` defaults to the checkpoint's ``generation_config.json``."""
        if input_ids is None or input_ids.shape[0] != 1:
            raise ValueError("generate takes one prompt: input_ids [1, L]")
        indexes = self.get_thw_indexes(input_ids[0], grid_hw)[:, None]
        embeds = self.embed(input_ids, pixel_values, grid_hw, visual_features)
        config = copy.deepcopy(generation_config or self.generation_config or GenerationConfig())
        model_kwargs = config.update(**generate_kwargs)  # what is not a generation parameter
        config.update(use_cache=True)
        if output_hidden_states is not None:
            config.update(output_hidden_states=output_hidden_states)
        return self.language_model.generate(
            inputs_embeds=embeds,
            indexes=indexes,
            attention_mask=attention_mask,
            generation_config=config,
            **model_kwargs,
        )
