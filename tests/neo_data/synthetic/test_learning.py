"""The learning cut as the demo's raw sources (``learning.WebRows``): square PNGs of one-group
scenes with their exact captions and conversations, and held-out scenes none of them shows."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
from PIL import Image

from neo_data.synthetic.evaluate import attributes
from neo_data.synthetic.learning import WebRows
from neo_data.synthetic.texts import DESCRIBE_QUESTION, caption_for
from neo_data.synthetic.web import write_web_sources


def test_web_rows_are_square_pngs_with_their_scenes_caption():
    rows = WebRows(size=64)
    for r in range(5):
        [(data, ext)], caption = rows.caption(0, r)
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.size, ext) == ("PNG", (64, 64), "png")
        assert caption == caption_for(rows.caption_scene(0, r))
        assert attributes(caption) is not None  # one group: parses back to five attributes
        images, turns = rows.conversation(0, r)
        assert len(images) == 1 and len(turns) == 2 * rows.turns
        assert turns[0]["content"].startswith("<image>\n")
        assert any(DESCRIBE_QUESTION in t["content"] for t in turns if t["role"] == "user")


def test_held_out_scenes_are_captions_no_training_row_has():
    rows = WebRows()
    train = {caption_for(s) for s in rows.training_scenes(0, 300, 100)}
    held = rows.held_out(0, 40, 300, 100)
    assert len(held) == 40 and len({caption_for(s) for s in held}) == 40
    assert not {caption_for(s) for s in held} & train


def test_write_web_sources_takes_the_learning_rows(tmp_path):
    paths = write_web_sources(tmp_path, "http://127.0.0.1:1", captions=3, recaption=1,
                              conversations=2, texts=2, rows=WebRows(size=32))  # fmt: skip
    table = pq.read_table(paths["captions"]).to_pylist()
    assert len(table) == 3 and all(r["url"].endswith(".png") for r in table)
    name = table[0]["url"].rsplit("/", 1)[1]
    assert Image.open(tmp_path / "images" / name).size == (32, 32)
    chats = [json.loads(x) for x in paths["conversations"].read_text().splitlines()]
    assert len(chats) == 2 and len(chats[0]["images"]) == 1
