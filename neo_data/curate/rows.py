"""One input row -> a curated sample (``CURATED_SCHEMA`` + dedup keys) or a rejected row.

Cheap checks run before the download (a junk caption costs no bandwidth); images are decoded
fully once, for the filters and the perceptual hash, and their original bytes are kept as
downloaded (no re-encode) with their sha256 and size. Every decision is recorded in the row's
``meta`` JSON (``download``, ``filters``), the lineage that travels with the sample.

Stages and their reasons: ``read`` (``bad_row``: a JSONL line that is not a JSON object, a CSV
record with the wrong number of fields; ``bad_conversation``, also a turn holding a lone
surrogate; ``image_count_mismatch``: ``<image>`` placeholders vs image URLs),
``download`` (``neo_data.curate.fetch``), ``filter`` (``neo_data.curate.filters``, plus
``text_not_utf8``; ``caption_not_utf8`` / ``text_not_utf8`` also for a lone surrogate, which
a JSON escape can make and no Parquet file can hold), ``dedup`` (``neo_data.curate.dedup``, decided later across the run).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from neo_data.curate.fetch import Fetched, fetch
from neo_data.curate.filters import (
    Drop,
    ImageInfo,
    check_caption,
    check_language,
    check_text,
    decode_budget,
    decode_text,
    inspect_image,
    unencodable,
)
from neo_data.curate.sources import ERROR_KEY
from neo_data.format.schema import IMAGE_PLACEHOLDER
from neo_data.manifest.curate import DownloadSpec, FilterSpec, SourceSpec


@dataclass(frozen=True)
class RowContext:
    source: SourceSpec
    filters: FilterSpec
    download: DownloadSpec
    input_file: str


@dataclass
class RowResult:
    sample: dict[str, Any] | None = None  # curated row + "_dedup_key", "_phash"
    rejected: dict[str, Any] | None = None
    bytes_downloaded: int = 0
    images_downloaded: int = 0
    fetch_seconds: float = 0.0


class Rejected(Exception):
    """A row leaves the pipeline at ``stage`` with a stable ``reason``."""

    def __init__(self, stage: str, reason: str, detail: str = ""):
        super().__init__(f"{stage}/{reason}: {detail}")
        self.stage, self.reason, self.detail = stage, reason, detail


def sample_id(source: str, row: int) -> str:
    return f"{source}-{row:09d}"


def process_row(ctx: RowContext, raw: dict[str, Any], row: int, input_row: int) -> RowResult:
    """Curate one raw row (``row``: index in the source, ``input_row``: in its file)."""
    res = RowResult()
    lineage: dict[str, Any] = {"input_file": ctx.input_file, "input_row": input_row}
    url = None
    try:
        if ERROR_KEY in raw:
            raise Rejected("read", "bad_row", raw[ERROR_KEY])
        kind = ctx.source.kind
        if kind == "caption":
            url = _cell_str(raw.get(ctx.source.columns.url))
            res.sample = _caption_sample(ctx, raw, url, lineage, res)
        elif kind == "conversation":
            res.sample = _conversation_sample(ctx, raw, lineage, res)
        else:
            url = ctx.input_file
            res.sample = _text_sample(ctx, raw, lineage)
    except Rejected as r:
        lineage["columns"] = _extras(ctx.source, raw)
        res.rejected = {
            "sample_id": sample_id(ctx.source.name, row),
            "source": ctx.source.name,
            "url": _storable(url),
            "row": row,
            "input_file": ctx.input_file,
            "input_row": input_row,
            "stage": r.stage,
            "reason": r.reason,
            "detail": _storable(r.detail),
            "meta": json.dumps(lineage, default=str),
        }
        return res
    res.sample.update(
        sample_id=sample_id(ctx.source.name, row),
        source=ctx.source.name,
        row=row,
        meta=json.dumps({**lineage, "columns": _extras(ctx.source, raw)}, default=str),
    )
    res.sample.setdefault("url", url)
    return res


# ---------------------------------------------------------------------------------------------
# Kinds
# ---------------------------------------------------------------------------------------------


def _caption_sample(
    ctx: RowContext, raw: dict, url: str | None, lineage: dict, res: RowResult
) -> dict:
    f = ctx.filters
    caption = _text_or_reject(raw.get(ctx.source.columns.caption), "caption")
    decisions = lineage.setdefault("filters", {})
    _check(check_caption(caption, f), "filter")
    decisions["caption"] = "pass"
    decisions["language"] = _language(caption, f)
    image, info = _download_image(ctx, url or "", lineage, res, 0)
    decisions["image"] = "pass"
    return {
        "kind": "caption",
        "text_only": False,
        "images": [image],
        "captions": [{"text": caption, "provenance": {"origin": "original"}}],
        "conversation": None,
        "text": None,
        "_dedup_key": f"img:{image['sha256']}" if f.exact_dedup else None,
        "_phash": info.phash if f.near_dedup else None,
    }


def _conversation_sample(ctx: RowContext, raw: dict, lineage: dict, res: RowResult) -> dict:
    f = ctx.filters
    urls = _url_list(raw.get(ctx.source.columns.images))
    turns = _turns(raw.get(ctx.source.columns.conversation))
    placeholders = sum(t["content"].count(IMAGE_PLACEHOLDER) for t in turns)
    if placeholders != len(urls):
        raise Rejected(
            "read",
            "image_count_mismatch",
            f"{placeholders} {IMAGE_PLACEHOLDER} vs {len(urls)} urls",
        )
    decisions = lineage.setdefault("filters", {})
    text = "\n".join(t["content"].replace(IMAGE_PLACEHOLDER, " ") for t in turns)
    decisions["language"] = _language(text, f)
    images = [_download_image(ctx, u, lineage, res, k)[0] for k, u in enumerate(urls)]
    decisions["images"] = "pass"
    content = json.dumps([[i["sha256"] for i in images], turns], sort_keys=True)
    return {
        "kind": "conversation",
        "text_only": not images,
        "images": images,
        "captions": None,
        "conversation": turns,
        "text": None,
        "url": urls[0] if urls else None,
        "_dedup_key": "conv:" + hashlib.sha256(content.encode()).hexdigest()
        if f.exact_dedup
        else None,
        "_phash": None,
    }


def _text_sample(ctx: RowContext, raw: dict, lineage: dict) -> dict:
    f = ctx.filters
    text = _text_or_reject(raw.get(ctx.source.columns.text), "text")
    _check(check_text(text, f), "filter")
    lineage["filters"] = {"text": "pass", "language": _language(text, f)}
    return {
        "kind": "text",
        "text_only": True,
        "images": None,
        "captions": None,
        "conversation": None,
        "text": text,
        "_dedup_key": "txt:" + hashlib.sha256(text.encode()).hexdigest() if f.exact_dedup else None,
        "_phash": None,
    }


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------


def _download_image(
    ctx: RowContext, url: str, lineage: dict, res: RowResult, k: int
) -> tuple[dict, ImageInfo]:
    got: Fetched = fetch(url, ctx.download)
    res.fetch_seconds += got.seconds
    lineage.setdefault("download", []).append(got.lineage())
    which = f"image {k}: " if ctx.source.kind == "conversation" else ""
    if got.data is None:
        raise Rejected("download", got.reason or "download_failed", which + got.detail)
    res.bytes_downloaded += len(got.data)
    res.images_downloaded += 1
    info = inspect_image(got.data, ctx.filters, decode_budget(ctx.download.decode_pixels))
    if isinstance(info, Drop):
        raise Rejected("filter", info.reason, which + info.detail)
    lineage.setdefault("images", []).append(
        {"format": info.format, "mode": info.mode, "size_bytes": len(got.data),
         "phash": f"{info.phash & ((1 << 64) - 1):016x}"}
    )  # fmt: skip
    entry = {
        "bytes": got.data,
        "width": info.width,
        "height": info.height,
        "sha256": hashlib.sha256(got.data).hexdigest(),
    }
    return entry, info


def _check(drop: Drop | None, stage: str) -> None:
    if drop is not None:
        raise Rejected(stage, drop.reason, drop.detail)


def _language(text: str, f: FilterSpec) -> str:
    drop, decision = check_language(text, f)
    _check(drop, "filter")
    return decision


def _text_or_reject(value: object, what: str) -> str:
    text = decode_text(value)
    if isinstance(text, Drop):
        raise Rejected("filter", f"{what}_not_utf8", text.detail)
    return text


def _cell_str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return str(value).strip()


def _url_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError as e:
                raise Rejected(
                    "read", "bad_conversation", f"images: not a JSON list ({e})"
                ) from None
        else:
            return [s] if s else []
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise Rejected("read", "bad_conversation", "images: expected a URL or a list of URLs")
    return value


def _turns(value: object) -> list[dict[str, str]]:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise Rejected("read", "bad_conversation", f"not valid JSON ({e})") from None
    if not isinstance(value, list) or not value:
        raise Rejected("read", "bad_conversation", "expected a non-empty list of turns")
    turns = []
    for i, t in enumerate(value):
        if not (
            isinstance(t, dict)
            and isinstance(t.get("role"), str)
            and isinstance(t.get("content"), str)
        ):
            raise Rejected("read", "bad_conversation", f"turn {i}: needs string role and content")
        if t["role"] not in ("system", "user", "assistant"):
            raise Rejected("read", "bad_conversation", f"turn {i}: unknown role {t['role']!a}")
        if (bad := unencodable(t["content"])) is not None:
            raise Rejected("read", "bad_conversation", f"turn {i}: {bad.detail}")
        turns.append({"role": t["role"], "content": t["content"]})
    return turns


def _storable(text: str | None) -> str | None:
    """A string a Parquet file can hold: lone surrogates as ``\\udXXX`` escapes (the rejected
    row keeps what the input said, readable)."""
    if text is None:
        return None
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _extras(source: SourceSpec, raw: dict) -> dict[str, Any]:
    """The input columns the sample does not use, kept for lineage."""
    c = source.columns
    used = {
        "caption": {c.url, c.caption},
        "conversation": {c.images, c.conversation},
        "text": {c.text},
    }[source.kind] | {ERROR_KEY}
    return {
        k: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v
        for k, v in raw.items()
        if k not in used
    }
