"""Tiny random models for tests, the demo and the benchmarks: the one place they are built.

Nothing here downloads: a Qwen3 comes from a config, a NEO from a preset, a LLaVA captioner from
configs plus NEO's built-in Qwen3 tokenizer. Each builder seeds torch itself, so the same call
gives the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neo_model.config import NeoConfig, debug, neo_2_2b

ROPE_THETA = 1_000_000.0  # Qwen3's


def qwen3_config(**overrides: Any):
    """A debug-size HF ``Qwen3Config`` with the real 151,936-token vocabulary; ``overrides``
    replace any field (``head_dim``, ``intermediate_size``, ``tie_word_embeddings`` ...)."""
    from transformers import Qwen3Config

    fields: dict[str, Any] = dict(
        vocab_size=151936, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
    )  # fmt: skip
    fields.update(overrides)
    return Qwen3Config(**fields)


def tiny_qwen3(tie: bool = True, seed: int = 0, perturb_norms: bool = True, **overrides: Any):
    """A random tiny ``Qwen3ForCausalLM`` (eval mode). ``perturb_norms`` draws the RMSNorm
    weights around 1, so a test comparing two implementations notices a norm applied wrongly
    (the initial all-ones weights would hide it)."""
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = qwen3_config(tie_word_embeddings=tie, attn_implementation="eager", **overrides)
    model = Qwen3ForCausalLM(config).eval()
    if perturb_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


def random_neo(config: NeoConfig | None = None, seed: int = 0, dtype=torch.float32):
    """A random-weight NEO (eval mode) of ``config`` (default: the ``debug`` preset)."""
    from neo_model.model import NeoChatModel

    torch.manual_seed(seed)
    return NeoChatModel(config or debug()).eval().to(dtype)


def save_random_neo(
    path: str | Path, shape: str | NeoConfig = "tiny", dtype=torch.float32, seed: int = 0
) -> Path:
    """A random NEO saved in the released layout: ``shape`` is ``"tiny"`` (the debug preset),
    ``"2b"`` (NEO-2.2B) or a config."""
    from neo_model.weights import save_pretrained

    config = shape if isinstance(shape, NeoConfig) else {"tiny": debug, "2b": neo_2_2b}[shape]()
    save_pretrained(random_neo(config, seed, dtype), path)
    return Path(path)


IMAGE_TOKEN = "<|image_pad|>"  # a Qwen3 special token: the LLaVA image placeholder
IMAGE_TOKEN_ID = 151655
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_SHAPES = {
    "tiny": {
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=16),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, image_size=28, patch_size=14),
    },
    "2b": {  # Qwen3-1.7B + CLIP ViT-L/14-336
        "text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                     tie_word_embeddings=True),
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, image_size=336, patch_size=14),
    },
}  # fmt: skip


def save_random_llava(path: str | Path, shape: str = "tiny", dtype=torch.float32) -> Path:
    """A random-weight LLaVA captioner (model + processor + chat template) saved to ``path``,
    loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``; no download: the
    tokenizer is NEO's built-in Qwen3 BPE."""
    import transformers
    from tokenizers import Tokenizer
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from neo_data.encoding.tokens import load_tokenizer

    neo_tok = load_tokenizer()
    backend = Tokenizer.from_str(neo_tok.backend.to_str())
    backend.encode_special_tokens = False  # the template's control tokens must be parsed
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    dims = LLAVA_SHAPES[shape]
    side = dims["vision"]["image_size"]
    config = LlavaConfig(
        text_config=dict(
            model_type="qwen3", vocab_size=neo_tok.vocab_size, max_position_embeddings=8192,
            **dims["text"],
        ),
        vision_config=dict(model_type="clip_vision_model", **dims["vision"]),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval().to(dtype)
    model.generation_config.eos_token_id = 151645  # <|im_end|>
    model.generation_config.pad_token_id = 151643
    image_processor_cls = getattr(transformers, "CLIPImageProcessorPil", None)
    image_processor = (image_processor_cls or transformers.CLIPImageProcessor)(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        patch_size=dims["vision"]["patch_size"],
        vision_feature_select_strategy="full",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's class token, kept by "full"
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
