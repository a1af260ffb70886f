"""Hugging Face configuration classes of a NEO checkpoint (remote code, ``trust_remote_code``).

Written by the ``neo`` project for its exports; imports only ``transformers``, so a checkpoint
folder works where ``neo`` is not installed. The JSON layout is the released NEO one
(``model_type`` ``neo_chat`` with ``llm_config`` and ``vision_config``); released configs store
some numbers as one-element lists, which are read as the number.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


def _scalar(value: Any) -> Any:
    """A number, unwrapping the one-element lists some released configs store."""
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ValueError(f"expected a number or a one-element list, got {value}")
        return value[0]
    return value


class NEOVisionConfig(PretrainedConfig):
    """The patch embedding: conv ``patch_size`` -> GELU -> 2D RoPE -> conv ``1/downsample_ratio``."""

    model_type = "neo_vision"

    def __init__(
        self,
        num_channels: int = 3,
        hidden_size: int = 1024,
        patch_size: int = 16,
        downsample_ratio: float = 0.5,
        llm_hidden_size: int = 2048,
        rope_theta_vision: float = 10000.0,
        max_position_embeddings_vision: int = 10000,
        min_pixels: int = 65536,
        max_pixels: int = 4194304,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_channels = int(_scalar(num_channels))
        self.hidden_size = int(_scalar(hidden_size))
        self.patch_size = int(_scalar(patch_size))
        self.downsample_ratio = float(_scalar(downsample_ratio))
        self.llm_hidden_size = int(_scalar(llm_hidden_size))
        self.rope_theta_vision = float(_scalar(rope_theta_vision))
        self.max_position_embeddings_vision = int(_scalar(max_position_embeddings_vision))
        self.min_pixels = int(_scalar(min_pixels))
        self.max_pixels = int(_scalar(max_pixels))


class NEOLLMConfig(PretrainedConfig):
    """Qwen3's fields plus NEO's: ``rope_theta_hw`` (H/W axes) and ``extra_num_layers`` (the
    pre-Buffer; ``num_hidden_layers`` counts every layer, pre-Buffer included)."""

    model_type = "qwen3"  # as the released llm_config says

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 2048,
        intermediate_size: int = 6144,
        num_hidden_layers: int = 40,
        extra_num_layers: int = 12,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 8,
        head_dim: int = 128,
        rms_norm_eps: float = 1e-6,
        rope_theta: float | None = None,
        rope_parameters: dict | None = None,
        rope_theta_hw: float = 10000.0,
        max_position_embeddings: int = 40960,
        max_position_embeddings_hw: int = 10000,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        theta = (rope_parameters or {}).get("rope_theta", rope_theta)
        self.vocab_size = int(_scalar(vocab_size))
        self.hidden_size = int(_scalar(hidden_size))
        self.intermediate_size = int(_scalar(intermediate_size))
        self.num_hidden_layers = int(_scalar(num_hidden_layers))
        self.extra_num_layers = int(_scalar(extra_num_layers))
        self.num_attention_heads = int(_scalar(num_attention_heads))
        self.num_key_value_heads = int(_scalar(num_key_value_heads))
        self.head_dim = int(_scalar(head_dim))
        self.rms_norm_eps = float(_scalar(rms_norm_eps))
        self.rope_theta = float(_scalar(theta if theta is not None else 1_000_000.0))
        # Both spellings, as in a neo export: transformers 4.x reads rope_theta, 5.x rope_parameters.
        self.rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        self.rope_theta_hw = float(_scalar(rope_theta_hw))
        self.max_position_embeddings = int(_scalar(max_position_embeddings))
        self.max_position_embeddings_hw = int(_scalar(max_position_embeddings_hw))
        self.initializer_range = initializer_range
        if rope_parameters and rope_parameters.get("rope_type", "default") != "default":
            raise ValueError(
                f"llm_config.rope_parameters: only rope_type 'default', got {rope_parameters}"
            )
        super().__init__(tie_word_embeddings=bool(_scalar(tie_word_embeddings)), **kwargs)


class NEOChatConfig(PretrainedConfig):
    """A whole NEO: ``llm_config`` (:class:`NEOLLMConfig`) and ``vision_config``
    (:class:`NEOVisionConfig`), the chat template name and NEO's image token ids."""

    model_type = "neo_chat"
    sub_configs = {"llm_config": NEOLLMConfig, "vision_config": NEOVisionConfig}

    def __init__(
        self,
        vision_config: dict | NEOVisionConfig | None = None,
        llm_config: dict | NEOLLMConfig | None = None,
        downsample_ratio: float = 0.5,
        template: str = "neo1_0",
        img_context_token_id: int = 151669,
        img_start_token_id: int = 151670,
        img_end_token_id: int = 151671,
        **kwargs: Any,
    ) -> None:
        if not isinstance(vision_config, NEOVisionConfig):
            vision_config = NEOVisionConfig(**(vision_config or {}))
        if not isinstance(llm_config, NEOLLMConfig):
            llm_config = NEOLLMConfig(**(llm_config or {}))
        self.vision_config = vision_config
        self.llm_config = llm_config
        self.downsample_ratio = float(_scalar(downsample_ratio))
        self.template = template
        self.img_context_token_id = img_context_token_id
        self.img_start_token_id = img_start_token_id
        self.img_end_token_id = img_end_token_id
        kwargs["tie_word_embeddings"] = llm_config.tie_word_embeddings
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        output["model_type"] = self.model_type
        return output
