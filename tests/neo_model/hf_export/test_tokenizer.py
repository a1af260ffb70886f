"""The tokenizer files of an export against neo_data's tokenizer (the one training used): the
same ids from ``AutoTokenizer`` (``tokenizer.json``) and from the slow files alone, special and
added tokens included, and the chat template renders neo's ``neo1_0`` prompts."""

from __future__ import annotations

import shutil

import pytest

from neo_data.encoding.tokens import (
    NEO_TOKENS,
    QWEN3_SPECIAL_START,
    QWEN3_SPECIAL_TOKENS,
    load_tokenizer,
    render_turns,
    user_content,
)

TEXTS = [
    "Hello world",
    "A photo of 12345 apples,   three spaces\n\nand new lines\r\n",
    "Ünïcödé café, 中文字符, emoji 🙂👍🏽, it's I'll we'd",
    "    indented code():\n\treturn x**2  # comment",
    "",
]


@pytest.fixture(scope="module")
def hf_tok(hf_tokenizer):
    """``AutoTokenizer(path, trust_remote_code=True, use_fast=False)``, as VLMEvalKit loads it
    (transformers 5 ignores ``use_fast`` and reads ``tokenizer.json``; the slow files are
    checked on their own below)."""
    return hf_tokenizer


def test_plain_text_gets_neo_datas_ids(hf_tok, tok):
    for text in TEXTS:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_every_added_token_is_at_its_released_id(hf_tok, tok):
    specials = {t: QWEN3_SPECIAL_START + i for i, t in enumerate(QWEN3_SPECIAL_TOKENS)}
    for token, i in {**specials, **NEO_TOKENS}.items():
        assert hf_tok.convert_tokens_to_ids(token) == i == tok.backend.token_to_id(token), token
    assert NEO_TOKENS == {"<IMG_CONTEXT>": 151669, "<img>": 151670, "</img>": 151671}
    # as VLMEvalKit's wrapper notes: image tokens are single tokens in text
    assert hf_tok.encode("<img><IMG_CONTEXT> hello world.</img>", add_special_tokens=False) == [
        151670, 151669, *tok.encode(" hello world."), 151671,
    ]  # fmt: skip
    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.pad_token == "<|endoftext|>"


def test_the_chat_template_renders_neos_prompt_ids(hf_tok, tok):
    turns = [
        ("system", "You are NEO."),
        ("user", user_content("What is in the image?", 1)),
        ("assistant", "A cat on a mat."),
        ("user", "And its colour?"),
    ]
    grids = [(2, 3)]
    messages = [{"role": r, "content": c} for r, c in turns]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * 6 + "</img>")
    expected = render_turns(tok, turns, grids, add_generation_prompt=True).input_ids
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == expected.tolist()
    # content as parts: an image part is neo's "<image>\n" in front of the text
    parts = [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]
    rendered = hf_tok.apply_chat_template([{"role": "user", "content": parts}], tokenize=False)
    assert rendered == "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n"


def test_the_slow_files_alone_give_the_same_ids(export_dir, tmp_path, tok):
    """vocab.json + merges.txt + tokenizer_config.json, without tokenizer.json: what a slow
    ``Qwen2Tokenizer`` (transformers 4.x, ``use_fast=False``) reads."""
    from transformers import AutoTokenizer

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(export_dir / name, tmp_path / name)
    slow = AutoTokenizer.from_pretrained(tmp_path, use_fast=False)
    for text in TEXTS:
        assert slow(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text
    for token, i in NEO_TOKENS.items():
        assert slow.convert_tokens_to_ids(token) == i
    assert len(slow) == load_tokenizer().vocab_size
