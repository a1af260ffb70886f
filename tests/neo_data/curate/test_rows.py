"""One raw row -> a curated sample or a rejected row, for the decisions made before any
download (no network): each read and filter reason, its stage, and the lineage of the row."""

from __future__ import annotations

import json

import pytest

from neo_data.curate.rows import RowContext, process_row, sample_id
from neo_data.curate.sources import ERROR_KEY
from neo_data.manifest.curate import DownloadSpec, FilterSpec, SourceSpec

TURNS = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}]


def context(kind: str) -> RowContext:
    source = SourceSpec(name="src", path="in.jsonl", kind=kind)
    return RowContext(source, FilterSpec(), DownloadSpec(), "file:///in.jsonl")


def rejected(kind: str, raw: dict) -> tuple[str, str]:
    res = process_row(context(kind), raw, row=41, input_row=7)
    assert res.sample is None and res.rejected is not None
    r = res.rejected
    assert (r["sample_id"], r["source"], r["row"]) == ("src-000000041", "src", 41)
    assert (r["input_file"], r["input_row"]) == ("file:///in.jsonl", 7)
    meta = json.loads(r["meta"])
    assert (meta["input_file"], meta["input_row"]) == ("file:///in.jsonl", 7)
    return r["stage"], r["reason"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"conversation": "[{not json"}, "bad_conversation"),
        ({"conversation": "[]"}, "bad_conversation"),
        ({"conversation": json.dumps([{"role": "user"}])}, "bad_conversation"),
        ({"conversation": json.dumps([{"role": "robot", "content": "x"}])}, "bad_conversation"),
        ({"conversation": json.dumps(TURNS), "images": "[not a list"}, "bad_conversation"),
        ({"conversation": json.dumps(TURNS), "images": [3]}, "bad_conversation"),
        ({"conversation": json.dumps(TURNS), "images": ["http://127.0.0.1:9/a.png"]},
         "image_count_mismatch"),
        ({ERROR_KEY: "line 3: not a JSON object"}, "bad_row"),
    ],
)  # fmt: skip
def test_a_conversation_is_read_or_rejected_with_its_reason(raw, reason):
    assert rejected("conversation", raw) == ("read", reason)


def test_undecodable_captions_and_texts_are_rejected_before_any_download():
    latin1 = "café au lait in a cup".encode("latin-1")
    assert rejected("caption", {"url": "http://127.0.0.1:9/x.png", "caption": latin1}) == (
        "filter",
        "caption_not_utf8",
    )
    assert rejected("caption", {"url": "http://127.0.0.1:9/x.png", "caption": "cat"}) == (
        "filter",
        "caption_too_short",
    )
    assert rejected("text", {"text": latin1 * 20}) == ("filter", "text_not_utf8")
    assert rejected("text", {"text": "   "}) == ("filter", "text_empty")


def test_a_conversation_without_images_and_a_text_are_kept_with_their_keys():
    res = process_row(context("conversation"), {"conversation": TURNS, "note": "n"}, 3, 3)
    s = res.sample
    assert res.rejected is None and s["sample_id"] == sample_id("src", 3) == "src-000000003"
    assert (s["kind"], s["text_only"], s["images"]) == ("conversation", True, [])
    assert s["conversation"] == TURNS and s["_dedup_key"].startswith("conv:")
    assert json.loads(s["meta"])["columns"] == {"note": "n"}
    text = "A long enough document about the harbour and its boats. " * 2
    t = process_row(context("text"), {"text": text}, 0, 0).sample
    assert (t["kind"], t["text_only"], t["text"]) == ("text", True, text)
    again = process_row(context("text"), {"text": text}, 1, 1).sample
    assert again["_dedup_key"] == t["_dedup_key"]  # the same text, the same exact key
    other = process_row(context("text"), {"text": text + "!"}, 2, 2).sample
    assert other["_dedup_key"] != t["_dedup_key"]
