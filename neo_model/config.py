"""NEO model configuration: one frozen dataclass, the released sizes, and the released JSON layout.

Layer counts follow the architecture doc: ``num_extra_layers`` pre-Buffer layers come first, then
the ``num_hidden_layers`` post-LLM layers copied from Qwen3. (In the released ``config.json`` the
``llm_config.num_hidden_layers`` is the *total* and ``extra_num_layers`` the pre-Buffer count;
:meth:`NeoConfig.to_released` / :meth:`NeoConfig.from_released` convert.)

Head split: per head, q and k are ``head_dim`` (T) + ``head_dim/2`` (H) + ``head_dim/2`` (W) wide
and v is ``head_dim`` wide, as in the released code (which derives the H/W width from
``head_dim // 2``). The released models use ``head_dim`` 128, i.e. 128 + 64 + 64; the ``debug``
size uses 32 = 32 + 16 + 16 so that a CPU step stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from neo_data.encoding.tokens import IMG_CONTEXT_ID, IMG_END_ID, IMG_START_ID

TEMPLATE = "neo1_0"

# The paper's Table 3 ablations. "native": T/H/W as the packer writes them (section 4 of the
# architecture doc); "1d": images as a text run (T one step per token, H = W = 0, so the H/W
# parts of q/k carry no position). "mixed": NEO's mask (bidirectional within an image);
# "causal": plain causal attention over images too.
RopeMode = Literal["native", "1d"]
AttentionMode = Literal["mixed", "causal"]


@dataclass(frozen=True)
class NeoConfig:
    # Language model: Qwen3 plus the native primitive's H/W query/key dimensions.
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28  # post-LLM layers (the Qwen3 stack)
    num_extra_layers: int = 12  # pre-Buffer layers, in front of the post-LLM
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0  # T axis
    rope_theta_hw: float = 10_000.0  # H and W axes
    # Recorded in config.json for compatibility; RoPE is computed on the fly, without a table.
    max_position_embeddings: int = 40960
    max_position_embeddings_hw: int = 10000
    tie_word_embeddings: bool = True
    # Patch embedding (the only vision module).
    patch_size: int = 16
    vision_hidden: int = 1024
    rope_theta_vision: float = 10_000.0
    max_position_embeddings_vision: int = 10000
    downsample: int = 2  # dense_embedding kernel = stride: one token per 32x32 pixels
    min_pixels: int = 65_536
    max_pixels: int = 4_194_304
    # Ablation switches (default: the released model's).
    rope: RopeMode = "native"
    attention: AttentionMode = "mixed"

    def __post_init__(self) -> None:
        _check(self.rope in get_args(RopeMode), "rope", self.rope, "'native' or '1d'")
        _check(
            self.attention in get_args(AttentionMode),
            "attention",
            self.attention,
            "'mixed' or 'causal'",
        )
        _check(self.head_dim % 4 == 0, "head_dim", self.head_dim, "a multiple of 4")
        _check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_attention_heads",
            self.num_attention_heads,
            f"a multiple of num_key_value_heads ({self.num_key_value_heads})",
        )
        _check(self.vision_hidden % 4 == 0, "vision_hidden", self.vision_hidden, "a multiple of 4")
        _check(self.num_hidden_layers >= 1, "num_hidden_layers", self.num_hidden_layers, ">= 1")
        _check(self.num_extra_layers >= 0, "num_extra_layers", self.num_extra_layers, ">= 0")
        _check(
            self.vocab_size > IMG_END_ID,
            "vocab_size",
            self.vocab_size,
            f"> {IMG_END_ID} (NEO's image token ids)",
        )

    @property
    def num_layers(self) -> int:
        """All decoder layers: pre-Buffer then post-LLM."""
        return self.num_extra_layers + self.num_hidden_layers

    @property
    def hw_dim(self) -> int:
        """Width of each of the H and W parts of one head's query/key."""
        return self.head_dim // 2

    @property
    def image_factor(self) -> int:
        """Pixels per side of one image token (32)."""
        return self.patch_size * self.downsample

    def replace(self, **changes: Any) -> NeoConfig:
        return dataclasses.replace(self, **changes)

    # -----------------------------------------------------------------------------------------
    # Released NEO config.json layout ("neo_chat" with llm_config and vision_config)
    # -----------------------------------------------------------------------------------------

    def to_released(self) -> dict[str, Any]:
        """The ``config.json`` dictionary of a released NEO checkpoint."""
        llm = {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "extra_num_layers": self.num_extra_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "attention_bias": False,
            "rms_norm_eps": self.rms_norm_eps,
            # Both spellings: transformers 4.x reads rope_theta, 5.x rope_parameters.
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rope_theta_hw": self.rope_theta_hw,
            "max_position_embeddings": self.max_position_embeddings,
            "max_position_embeddings_hw": self.max_position_embeddings_hw,
            "tie_word_embeddings": self.tie_word_embeddings,
            # ours (the released models are native + mixed); a checkpoint records its ablation
            "rope_mode": self.rope,
            "attention_mode": self.attention,
        }
        vision = {
            "architectures": ["NEOVisionModel"],
            "model_type": "neo_vision",
            "num_channels": 3,
            "hidden_size": self.vision_hidden,
            "patch_size": self.patch_size,
            "downsample_ratio": 1.0 / self.downsample,
            "llm_hidden_size": self.hidden_size,
            "rope_theta_vision": self.rope_theta_vision,
            "max_position_embeddings_vision": self.max_position_embeddings_vision,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }
        return {
            "architectures": ["NEOChatModel"],
            "model_type": "neo_chat",
            "template": TEMPLATE,
            "downsample_ratio": 1.0 / self.downsample,
            "tie_word_embeddings": self.tie_word_embeddings,
            "img_context_token_id": IMG_CONTEXT_ID,
            "img_start_token_id": IMG_START_ID,
            "img_end_token_id": IMG_END_ID,
            "llm_config": llm,
            "vision_config": vision,
        }

    @classmethod
    def from_released(cls, config: dict[str, Any]) -> NeoConfig:
        """Read a released NEO ``config.json`` dictionary (one-element lists accepted)."""
        if config.get("model_type") != "neo_chat":
            raise ValueError(
                f"config.json: model_type is {config.get('model_type')!r}, expected 'neo_chat'"
            )
        for key in ("llm_config", "vision_config"):
            if not isinstance(config.get(key), dict):
                raise ValueError(f"config.json: {key} is missing or not an object")
        llm, vision = config["llm_config"], config["vision_config"]
        total = int(_scalar(llm, "num_hidden_layers", "llm_config"))
        extra = int(_scalar(llm, "extra_num_layers", "llm_config", default=0))
        downsample_ratio = float(_scalar(vision, "downsample_ratio", "vision_config", default=0.5))
        cfg = cls(
            **_qwen3_fields(llm, "llm_config"),
            num_hidden_layers=total - extra,
            num_extra_layers=extra,
            rope_theta_hw=float(_scalar(llm, "rope_theta_hw", "llm_config", default=10_000.0)),
            max_position_embeddings_hw=int(
                _scalar(llm, "max_position_embeddings_hw", "llm_config", default=10000)
            ),
            patch_size=int(_scalar(vision, "patch_size", "vision_config", default=16)),
            vision_hidden=int(_scalar(vision, "hidden_size", "vision_config", default=1024)),
            rope_theta_vision=float(
                _scalar(vision, "rope_theta_vision", "vision_config", default=10_000.0)
            ),
            max_position_embeddings_vision=int(
                _scalar(vision, "max_position_embeddings_vision", "vision_config", default=10000)
            ),
            downsample=round(1.0 / downsample_ratio),
            min_pixels=int(_scalar(vision, "min_pixels", "vision_config", default=65_536)),
            max_pixels=int(_scalar(vision, "max_pixels", "vision_config", default=4_194_304)),
            rope=str(_scalar(llm, "rope_mode", "llm_config", default="native")),
            attention=str(_scalar(llm, "attention_mode", "llm_config", default="mixed")),
        )
        llm_hidden = vision.get("llm_hidden_size")
        if (
            llm_hidden is not None
            and int(_scalar(vision, "llm_hidden_size", "")) != cfg.hidden_size
        ):
            raise ValueError(
                f"config.json: vision_config.llm_hidden_size {llm_hidden} != "
                f"llm_config.hidden_size {cfg.hidden_size}"
            )
        return cfg

    @classmethod
    def from_qwen3(
        cls, qwen3: dict[str, Any], num_extra_layers: int, **overrides: Any
    ) -> NeoConfig:
        """A NEO config on top of a HF Qwen3 ``config.json`` dictionary (transformers 4 or 5)."""
        if qwen3.get("model_type") != "qwen3":
            raise ValueError(
                f"Qwen3 config.json: model_type is {qwen3.get('model_type')!r}, expected 'qwen3'"
            )
        fields = _qwen3_fields(qwen3, "config.json")
        fields.update(
            num_hidden_layers=int(qwen3["num_hidden_layers"]), num_extra_layers=num_extra_layers
        )
        fields.update(overrides)
        return cls(**fields)


def _qwen3_fields(llm: dict[str, Any], where: str) -> dict[str, Any]:
    """The Qwen3 fields of a NEO config from a Qwen3 (or NEO ``llm_config``) dictionary."""
    rope = llm.get("rope_parameters") or {}
    theta = rope.get("rope_theta", llm.get("rope_theta"))
    if theta is None:
        raise ValueError(f"{where}: no rope_parameters.rope_theta nor rope_theta")
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"{where}: rope_type {rope['rope_type']!r} is not supported, only 'default'"
        )
    if llm.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act {llm['hidden_act']!r}; Qwen3 and NEO use 'silu'")
    if llm.get("attention_bias", False):
        raise ValueError(f"{where}: attention_bias is true; Qwen3 and NEO have no biases")
    hidden = int(_scalar(llm, "hidden_size", where))
    heads = int(_scalar(llm, "num_attention_heads", where))
    return {
        "vocab_size": int(_scalar(llm, "vocab_size", where)),
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(llm, "intermediate_size", where)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(llm, "num_key_value_heads", where, default=heads)),
        "head_dim": int(_scalar(llm, "head_dim", where, default=hidden // heads)),
        "rms_norm_eps": float(_scalar(llm, "rms_norm_eps", where, default=1e-6)),
        "rope_theta": float(theta),
        "max_position_embeddings": int(
            _scalar(llm, "max_position_embeddings", where, default=40960)
        ),
        "tie_word_embeddings": bool(_scalar(llm, "tie_word_embeddings", where, default=False)),
    }


def _scalar(d: dict[str, Any], key: str, where: str, default: Any = None) -> Any:
    """``d[key]``, unwrapping the one-element lists some released configs store."""
    value = d.get(key, default)
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ValueError(f"{where}.{key}: expected a number or a one-element list, got {value}")
        value = value[0]
    if value is None:
        raise ValueError(f"{where}.{key} is missing")
    return value


def _check(ok: bool, field: str, value: Any, valid: str) -> None:
    if not ok:
        raise ValueError(f"NeoConfig.{field} = {value!r}: must be {valid}")


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def neo_2_2b() -> NeoConfig:
    """NEO-2.2B: Qwen3-1.7B (28 layers) behind 12 pre-Buffer layers."""
    return NeoConfig(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_extra_layers=12,
        num_attention_heads=16,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    )


def neo_9b() -> NeoConfig:
    """NEO-9B: Qwen3-8B (36 layers) behind 6 pre-Buffer layers."""
    return NeoConfig(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_extra_layers=6,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    )


def debug() -> NeoConfig:
    """A tiny NEO for CPU tests: 2 pre-Buffer + 2 post-LLM layers, hidden 64, head_dim 32.

    The vocabulary stays full size so real token ids (and NEO's image tokens) are valid.
    """
    return NeoConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_extra_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vision_hidden=64,
        tie_word_embeddings=True,
        min_pixels=32 * 32,
        max_pixels=256 * 256,
    )


# The sizes by the names the benchmarks take on their command line (`--preset 2.2b`).
PRESETS = {"2.2b": neo_2_2b, "9b": neo_9b, "debug": debug}
