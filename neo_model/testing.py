"""Tiny random models for tests, the demo and the benchmarks: the one place they are built.

Nothing here downloads: a Qwen3 comes from a config, a NEO from a preset, a LLaVA captioner from
configs plus NEO's built-in Qwen3 tokenizer; a HF Qwen3 of a NEO's language dimensions is the
benchmarks' baseline, and :func:`train_tiny_lm` trains a debug Qwen3 briefly on given texts (the
learning benchmark's language model). Each builder seeds torch itself, so the same call gives
the same weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
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


def qwen3_config_like(neo: NeoConfig, **overrides: Any):
    """A HF ``Qwen3Config`` with ``neo``'s language dimensions (hidden size, heads, head_dim,
    intermediate size, vocabulary, norms, RoPE, tying) and as many layers as its pre-Buffer and
    post-LLM together: a plain Qwen3 of the same size."""
    fields: dict[str, Any] = dict(
        vocab_size=neo.vocab_size, hidden_size=neo.hidden_size,
        intermediate_size=neo.intermediate_size, num_hidden_layers=neo.num_layers,
        num_attention_heads=neo.num_attention_heads, num_key_value_heads=neo.num_key_value_heads,
        head_dim=neo.head_dim, rms_norm_eps=neo.rms_norm_eps,
        tie_word_embeddings=neo.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": neo.rope_theta},
    )  # fmt: skip
    fields.update(overrides)
    return qwen3_config(**fields)


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


def random_neo(
    config: NeoConfig | None = None,
    seed: int = 0,
    dtype=torch.float32,
    device: str | torch.device = "cpu",
):
    """A random-weight NEO (eval mode) of ``config`` (default: the ``debug`` preset), built
    directly on ``device`` (a 9B model need not pass through host memory)."""
    from neo_model.model import NeoChatModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = NeoChatModel(config or debug())
    model = model.eval().to(dtype)
    model.language_model.tie_weights()
    return model


def save_random_neo(
    path: str | Path, shape: str | NeoConfig = "tiny", dtype=torch.float32, seed: int = 0
) -> Path:
    """A random NEO saved in the released layout: ``shape`` is ``"tiny"`` (the debug preset),
    ``"2b"`` (NEO-2.2B) or a config."""
    from neo_model.weights import save_pretrained

    config = shape if isinstance(shape, NeoConfig) else {"tiny": debug, "2b": neo_2_2b}[shape]()
    save_pretrained(random_neo(config, seed, dtype), path)
    return Path(path)


def _padded_lm_loss(model, seqs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of a HF causal LM on a right-padded batch of (ids, labels), and its
    target count. The vocabulary projection runs on the target rows only, a chunk at a time (the
    trainer's ``chunked_token_loss``): the 151,936-wide logits of every position would dominate."""
    from neo_model.loss import chunked_token_loss

    width = max(len(s) for s, _ in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, (s, lab) in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        labels[r, : len(s)] = torch.tensor(lab)
        mask[r, : len(s)] = 1
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = labels != -100
    rows, targets = hidden[keep], labels[keep]
    loss = chunked_token_loss(rows, model.lm_head.weight, targets, torch.ones(len(targets)))
    return loss, len(targets)


def train_tiny_lm(
    texts: list[tuple[list[int], list[int]]],
    steps: int,
    lr: float,
    seed: int = 0,
    *,
    batch_size: int = 16,
    on_progress: Callable[[int, float], None] | None = None,
):
    """A debug Qwen3 (:func:`qwen3_config`, intermediate 128, head_dim 32) trained from random
    weights on (token ids, labels) sequences: AdamW (betas 0.9 / 0.95, weight decay 0.01),
    ``batch_size`` sequences a step, 10% warm-up then cosine to 10% of ``lr``, gradients clipped
    at 1. Returns the model and its loss curve (every 10th step and the last);
    ``on_progress(step, loss)`` is called every 50 steps."""
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(intermediate_size=128, head_dim=32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(seed)
    curve = []
    for step in range(1, steps + 1):
        for g in opt.param_groups:  # warm-up 10%, then cosine to 10%
            w = min(1.0, step / max(1, steps // 10))
            g["lr"] = lr * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss, n = _padded_lm_loss(model, rng.sample(texts, batch_size))
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps:
            curve.append({"step": step, "loss": float(loss.detach()) / n})
        if step % 50 == 0 and on_progress is not None:
            on_progress(step, curve[-1]["loss"])
    return model, curve


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
