"""Curated rows built by hand, and the file they are written to: what the synthetic data sets and
the tests' fixtures hand to the stages.

A row has every column of :data:`~neo_data.format.schema.CURATED_SCHEMA`; the column of the
row's own kind (``captions``, ``conversation`` or ``text``) is set and the other two are null.
Files are written with the stages' own Parquet writer
(:func:`neo_data.format.storage.table_to_parquet_bytes`), locally or to any fsspec URL.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from PIL import Image

from neo_data.format.schema import CURATED_SCHEMA
from neo_data.format.storage import atomic_write, sha256_hex, table_to_parquet_bytes, url_to_fs

# The provenance of a caption that came with its image (nothing generated it).
ORIGINAL_PROVENANCE = {
    "origin": "original",
    "backend": None,
    "model": None,
    "prompt_template": None,
    "prompt_sha256": None,
    "generation": None,
    "created_at": None,
}


def image_entry(data: bytes, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """One element of ``images``: the encoded bytes, their size and sha256. Without ``size`` it
    is read from the bytes (None x None for bytes that do not decode: a corrupt image on
    purpose)."""
    if size is None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
        except (OSError, Image.UnidentifiedImageError):
            size = (None, None)
    return {"bytes": data, "width": size[0], "height": size[1], "sha256": sha256_hex(data)}


def curated_row(
    kind: str,
    sample_id: str,
    source: str,
    row: int,
    *,
    text_only: bool | None = None,
    images: Sequence[dict[str, Any]] | None = (),
    captions: list[dict[str, Any]] | None = None,
    conversation: list[dict[str, str]] | None = None,
    text: str | None = None,
    url: str | None = None,
    meta: str | None = None,
) -> dict[str, Any]:
    """A row of every curated column. ``text_only`` defaults to ``kind == "text"``; ``images``
    are :func:`image_entry` dicts (``None`` is kept as a null list)."""
    return {
        "sample_id": sample_id,
        "kind": kind,
        "text_only": kind == "text" if text_only is None else text_only,
        "images": None if images is None else list(images),
        "captions": captions,
        "conversation": conversation,
        "text": text,
        "source": source,
        "url": url,
        "row": row,
        "meta": meta,
    }


def synthetic_row(
    kind: str,
    source: str,
    seed: int,
    row: int,
    *,
    generator: str,
    url: str,
    meta: dict[str, Any],
    **columns: Any,
) -> dict[str, Any]:
    """Row ``row`` of a seeded synthetic source: sample id ``<source>-<seed>-<row:06d>``, a
    ``meta`` JSON naming the ``generator`` and ``seed`` (plus ``meta``), the kind's own
    ``columns`` (:func:`curated_row`'s keywords)."""
    meta_json = json.dumps({"generator": generator, "seed": seed, **meta}, sort_keys=True)
    sample_id = f"{source}-{seed}-{row:06d}"
    return curated_row(kind, sample_id, source, row, url=url, meta=meta_json, **columns)


def write_curated(url: str, rows: list[dict[str, Any]], row_group_size: int | None = None) -> str:
    """Write ``rows`` as one curated Parquet file at ``url`` (local path or fsspec URL; it
    appears whole or not at all); returns ``url``."""
    table = pa.Table.from_pylist(rows, schema=CURATED_SCHEMA)
    fs, path = url_to_fs(url)
    atomic_write(fs, path, table_to_parquet_bytes(table, row_group_size))
    return url
