import pytest

from neo_data.encoding.encode import EncodeSettings, SampleEncoder, SampleRejected
from neo_data.encoding.images import ImageEncoding
from neo_data.encoding.tokens import load_tokenizer
from tests.helpers import caption_row, conversation_row, image_bytes, text_row


def encoder(**kw) -> SampleEncoder:
    settings = dict(
        seq_len=512, max_image_tokens=400, min_pixels=32 * 32, max_pixels=512 * 512,
        max_decode_pixels=10**8, encoding=ImageEncoding(),
    )  # fmt: skip
    settings.update(kw)
    return SampleEncoder(load_tokenizer(), EncodeSettings(**settings))


def test_a_caption_sample_is_image_then_supervised_caption():
    s = encoder()(caption_row(0, "A red box.", [image_bytes(96, 64)]))
    assert s.image_heights == [64] and s.image_widths == [96] and s.num_image_tokens == 6
    tok = load_tokenizer()
    supervised = [int(x) for x in s.labels if x >= 0]
    assert tok.decode(supervised) == "A red box.<|im_end|>\n"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (caption_row(0, "ok", [b"\x00\x01garbage"]), "image_decode_error"),
        (caption_row(0, "ok", [b""]), "image_empty"),
        (caption_row(0, "ok", [image_bytes(4020, 10)]), "aspect_ratio_too_extreme"),
        (caption_row(0, "   ", [image_bytes(64, 64)]), "empty_caption"),
        (caption_row(0, "word " * 600, [image_bytes(64, 64)]), "too_long_for_budget"),
        (caption_row(0, "big", [image_bytes(700, 700)]), "too_many_image_tokens"),
        ({**caption_row(0, "ok", [image_bytes(64, 64)]), "images": None}, "missing_field"),
        ({**caption_row(0, "ok", [image_bytes(64, 64)]), "captions": []}, "missing_field"),
        ({**text_row(0, "x"), "text": None}, "missing_field"),
        (text_row(0, " \n "), "empty_caption"),
        ({**text_row(0, "x"), "kind": "video"}, "unknown_kind"),
        (
            conversation_row(0, [("user", "hi"), ("assistant", "yo")], [image_bytes(64, 64)]),
            "template_error",
        ),
        (conversation_row(0, [("user", "<image>")], [image_bytes(64, 64)]), "no_supervised_tokens"),
        (conversation_row(0, [("narrator", "hi")], []), "template_error"),
    ],
)
def test_bad_rows_are_rejected_with_their_reason(row, reason):
    with pytest.raises(SampleRejected) as e:
        encoder(max_image_tokens=200)(row)
    assert e.value.reason == reason


def test_text_only_conversation_needs_no_image():
    s = encoder()(conversation_row(0, [("user", "2+2?"), ("assistant", "4")], []))
    assert s.images == [] and s.num_image_tokens == 0 and s.num_supervised > 0


def test_caption_choice_mix_follows_the_ratio():
    row = caption_row(0, "original text", [image_bytes(64, 64)])
    row["captions"].append(
        {"text": "recaptioned text", "provenance": {"origin": "recaption", "model": "m"}}
    )
    enc = encoder(caption_choice="mix", recaption_ratio=0.25)
    picks = [enc.choose_caption({**row, "sample_id": f"id{i}"}) for i in range(4000)]
    share = picks.count("recaptioned text") / len(picks)
    assert abs(share - 0.25) < 0.03
    assert encoder(caption_choice="original").choose_caption(row) == "original text"
    assert encoder(caption_choice="recaption").choose_caption(row) == "recaptioned text"
    assert encoder(caption_choice="first").choose_caption(row) == "original text"


def test_the_token_and_image_budgets_are_inclusive():
    row = caption_row(0, "A red box.", [image_bytes(96, 64)])  # a 2x3 grid: 6 image tokens
    n = encoder()(row).num_tokens
    assert encoder(seq_len=n)(row).num_tokens == n
    with pytest.raises(SampleRejected, match=f"{n} tokens > pack budget {n - 1}"):
        encoder(seq_len=n - 1)(row)
    assert encoder(max_image_tokens=6)(row).num_image_tokens == 6
    with pytest.raises(SampleRejected, match="6 image tokens > pack image budget 5"):
        encoder(max_image_tokens=5)(row)


def test_recaption_choice_takes_the_newest_recaption():
    row = caption_row(0, "original text", [image_bytes(64, 64)])
    for text in ("first recaption", "second recaption"):
        row["captions"].append({"text": text, "provenance": {"origin": "recaption", "model": "m"}})
    assert encoder(caption_choice="recaption").choose_caption(row) == "second recaption"
    assert encoder(caption_choice="original").choose_caption(row) == "original text"
