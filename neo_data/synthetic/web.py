"""The demo data as a crawler meets it: image files behind a loopback HTTP server and source
tables of URLs, captions, conversations and texts -- the input of ``neo curate``.

The rows are those of :mod:`neo_data.synthetic.dataset` (same generator, seeds and sample
counts); their images become files under ``<web>/images/`` and the tables are written as a
user's raw sources would be: Parquet (url + caption; text), JSONL (image URLs + turns).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.synthetic.dataset import demo_caption_row, demo_conversation_row, demo_text_row
from neo_data.synthetic.render import EXTENSIONS

# Source names of the demo manifests (manifests/demo.yaml).
SOURCES = {
    "captions": "demo-captions",  # url + caption, recaptioning leaves them as they are
    "recaption": "demo-recaption",  # url + caption, the part the recaption job recaptions
    "conversations": "demo-conversations",  # image URLs + turns (mid-training, SFT)
    "text": "demo-text",  # text-only documents
}


Images = list[tuple[bytes, str]]  # (encoded bytes, file extension) of each image of a row


class DemoRows:
    """The demo dataset's rows (:mod:`neo_data.synthetic.dataset`: varied scenes, sizes and
    formats) in the shape :func:`write_web_sources` takes; ``learning.WebRows`` is the other."""

    def caption(self, seed: int, row: int) -> tuple[Images, str]:
        r = demo_caption_row(seed, row)
        return self._images(r), r["captions"][0]["text"]

    def conversation(self, seed: int, row: int) -> tuple[Images, list[dict[str, str]]]:
        r = demo_conversation_row(seed, row)
        return self._images(r), r["conversation"]

    @staticmethod
    def _images(row: dict) -> Images:
        formats = [m["format"] for m in json.loads(row["meta"])["images"]]
        return [(im["bytes"], EXTENSIONS[f]) for im, f in zip(row["images"], formats, strict=True)]


def write_web_sources(
    web_dir: str | Path,
    base_url: str,
    *,
    captions: int,
    recaption: int,
    conversations: int,
    texts: int,
    seed: int = 0,
    rows: Any = None,
) -> dict[str, Path]:
    """Write image files and source tables under ``web_dir``; URLs start with ``base_url``.

    Caption rows ``0 .. captions-1`` form ``captions.parquet`` and rows ``captions ..
    captions+recaption-1`` form ``recaption.parquet`` (distinct scenes: one generator stream).
    ``rows`` makes the caption and conversation rows (``.caption(seed, r)``,
    ``.conversation(seed, r)``): :class:`DemoRows` (default) or
    :class:`neo_data.synthetic.learning.WebRows`. Returns the source table of each key of
    :data:`SOURCES`.
    """
    rows = rows or DemoRows()
    web = Path(web_dir)
    (web / "images").mkdir(parents=True, exist_ok=True)
    base_url = base_url.rstrip("/")

    def save(images: Images, stem: str) -> list[str]:
        urls = []
        for k, (data, ext) in enumerate(images):
            name = f"{stem}-{k}.{ext}"
            (web / "images" / name).write_bytes(data)
            urls.append(f"{base_url}/images/{name}")
        return urls

    def caption_table(indices: range) -> pa.Table:
        out = []
        for r in indices:
            images, caption = rows.caption(seed, r)
            out.append({"url": save(images, f"caption-{r:06d}")[0], "caption": caption})
        return pa.Table.from_pylist(
            out, schema=pa.schema({"url": pa.string(), "caption": pa.string()})
        )

    paths = {
        "captions": web / "captions.parquet",
        "recaption": web / "recaption.parquet",
        "conversations": web / "conversations.jsonl",
        "text": web / "text.parquet",
    }
    pq.write_table(caption_table(range(captions)), paths["captions"])
    pq.write_table(caption_table(range(captions, captions + recaption)), paths["recaption"])
    with open(paths["conversations"], "w", encoding="utf-8") as f:
        for r in range(conversations):
            images, turns = rows.conversation(seed, r)
            urls = save(images, f"chat-{r:06d}")
            f.write(json.dumps({"images": urls, "conversation": turns}) + "\n")
    docs = [{"text": demo_text_row(seed, r)["text"]} for r in range(texts)]
    pq.write_table(
        pa.Table.from_pylist(docs, schema=pa.schema({"text": pa.string()})), paths["text"]
    )
    return paths


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- stdlib name
        pass


@contextlib.contextmanager
def serve_directory(root: str | Path, port: int = 0) -> Iterator[str]:
    """Serve ``root`` read-only over HTTP on 127.0.0.1 in a background thread; yields the
    base URL (``http://127.0.0.1:<port>``)."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="neo-demo-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
