"""What the shard browser shows, as plain data: the CLI (``neo shards``) prints it, the web page
(:mod:`neo_data.browser.web`) renders it. Nothing here writes to a dataset.

* :func:`find_datasets`: every packed dataset (``index.json``) a few levels below a URL.
* :func:`dataset_row` / :func:`shard_rows` / :func:`pack_rows`: the listing tables.
* :func:`source_counts` / :func:`read_rejected`: where every input row went, per source.
* :func:`sample_turns` / :func:`token_rows`: a pack's samples as text and its tokens with T/H/W.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from neo_data.encoding.tokens import (
    ENDOFTEXT_ID,
    IGNORE_INDEX,
    IM_END_ID,
    IM_START_ID,
    IMG_END_ID,
    IMG_START_ID,
    NeoTokenizer,
)
from neo_data.format.schema import (
    INDEX_NAME,
    REJECTED_DIR,
    REJECTED_SCHEMA,
    WORK_DIR,
    SchemaMismatch,
    check_schema,
)
from neo_data.format.shards import PackedDataset
from neo_data.format.storage import join, url_to_fs

SHARDS_DIR = "shards"
# Directories inside a packed dataset: never searched for further datasets.
_DATASET_PARTS = {SHARDS_DIR, REJECTED_DIR, WORK_DIR}

# ---------------------------------------------------------------------------------------------
# Finding and listing datasets
# ---------------------------------------------------------------------------------------------


@dataclass
class DatasetEntry:
    """A packed dataset found below a listed URL. ``index`` is None when it is unfinished (job
    state but no ``index.json``) or unreadable; ``problem`` then says why."""

    url: str  # full URL (or local path) of the dataset root
    rel: str  # relative to the listed URL; "." for the URL itself
    index: dict | None = None
    problem: str | None = None


def find_datasets(url: str, max_depth: int = 3) -> list[DatasetEntry]:
    """Every packed dataset at ``url`` or at most ``max_depth`` directories below it.

    A directory holding ``index.json`` is a dataset and is not searched further; one holding
    ``_work/`` but no index is an unfinished pack job. Works on any fsspec URL (``s3://`` lists
    by prefix, one request per directory visited).
    """
    url = url.rstrip("/") or "/"
    if url.endswith(f"/{INDEX_NAME}"):  # the index itself names its dataset
        url = url[: -len(INDEX_NAME) - 1]
    fs, root = url_to_fs(url)
    if not fs.exists(root):
        raise FileNotFoundError(f"{url}: no such directory or prefix")
    found: list[DatasetEntry] = []
    _walk(fs, root.rstrip("/"), url, ".", max_depth, found)
    return found


def _walk(fs: Any, path: str, url: str, rel: str, depth: int, found: list[DatasetEntry]) -> None:
    entries = fs.ls(path, detail=True)
    by_name = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries}
    if by_name.get(INDEX_NAME, {}).get("type") == "file":
        found.append(_open_entry(url, rel))
        return
    if by_name.get(WORK_DIR, {}).get("type") == "directory":
        found.append(DatasetEntry(url, rel, problem=f"unfinished: no {INDEX_NAME} yet"))
        return
    if depth <= 0:
        return
    for name in sorted(by_name):
        if by_name[name]["type"] == "directory" and name not in _DATASET_PARTS:
            sub = name if rel == "." else f"{rel}/{name}"
            _walk(fs, by_name[name]["name"].rstrip("/"), join(url, name), sub, depth - 1, found)


def _open_entry(url: str, rel: str) -> DatasetEntry:
    try:
        ds = PackedDataset(url)
    except (SchemaMismatch, json.JSONDecodeError, KeyError) as e:  # a broken index: list it
        return DatasetEntry(url, rel, problem=f"unreadable {INDEX_NAME}: {e}")
    return DatasetEntry(url, rel, index=ds.index)


def dataset_row(entry: DatasetEntry) -> dict:
    """One line of ``neo shards ls``: name, stage and totals of a dataset."""
    row: dict[str, Any] = {"dataset": entry.rel, "url": entry.url}
    if entry.index is None:
        return {**row, "name": None, "stage": None, "problem": entry.problem}
    idx, t = entry.index, entry.index["totals"]
    return {
        **row,
        "name": idx["manifest"]["name"],
        "stage": idx["manifest"]["stage"],
        "created_at": idx.get("created_at"),
        "seq_len": idx["seq_len"],
        "buckets": [b["name"] for b in idx["buckets"]],
        "packs": t["packs"],
        "samples": t["samples"],
        "tokens": t["tokens"],
        "bytes": t["bytes"],
        "shards": len(idx["shards"]),
        "fill": t["fill"],
        "dropped": sum(t["dropped"].values()),
    }


def shard_rows(index: dict) -> list[dict]:
    """The shards of a dataset as the index records them (number for ``show --shard``, path,
    bucket, size, counts, format: ``parquet`` or ``arrow``)."""
    keys = ("path", "bucket", "bytes", "packs", "samples", "text_samples", "tokens", "images")
    return [
        {"shard": i, **{k: s[k] for k in keys}, "format": s.get("format", "parquet")}
        for i, s in enumerate(index["shards"])
    ]


PACK_COLUMNS = [
    "pack_id",
    "num_tokens",
    "num_image_tokens",
    "num_supervised",
    "cu_seqlens",
    "image_heights",
]


def pack_rows(ds: PackedDataset, shard: int) -> list[dict]:
    """The packs of one shard, reading only their small columns (no tokens, no image bytes)."""
    table = ds.read_shard(shard, columns=PACK_COLUMNS)
    seq_len = ds.index["seq_len"]
    rows = []
    for p, r in enumerate(table.to_pylist()):
        rows.append(
            {
                "pack": p,
                "pack_id": r["pack_id"],
                "tokens": r["num_tokens"],
                "image_tokens": r["num_image_tokens"],
                "supervised": r["num_supervised"],
                "samples": len(r["cu_seqlens"]) - 1,
                "images": len(r["image_heights"]),
                "fill": r["num_tokens"] / seq_len,
            }
        )
    return rows


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table: numbers right-aligned with thousands separators, text left."""

    def cell(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return "" if v is None else str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, list):
            return ",".join(map(str, v))
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns
    ]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


# ---------------------------------------------------------------------------------------------
# Sources and rejected rows
# ---------------------------------------------------------------------------------------------


# check_schema compares names/versions from metadata, which rejected files do not carry; only
# its column checks apply (files without the metadata skip the name/version comparison).
_REJECTED_CHECK = REJECTED_SCHEMA.with_metadata(
    {"neo.schema": "neo.rejected", "neo.schema_version": "1"}
)


def read_rejected(ds: PackedDataset) -> pa.Table:
    """Every row the packer did not pack (``rejected/*.parquet``), in :data:`REJECTED_SCHEMA`."""
    pattern = join(ds.root, REJECTED_DIR, "*.parquet")
    tables = []
    for path in sorted(ds.fs.glob(pattern)):
        with ds.fs.open(path, "rb") as f:
            table = pq.read_table(f, page_checksum_verification=True)
        check_schema(table.schema, _REJECTED_CHECK, path)
        for f in REJECTED_SCHEMA:  # an optional column may be absent: add it as nulls
            if f.name not in table.schema.names:
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
        tables.append(table.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA))
    return pa.concat_tables(tables) if tables else REJECTED_SCHEMA.empty_table()


@dataclass
class SourceCount:
    packed: int = 0
    text_only: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.packed + sum(self.dropped.values())


def source_counts(ds: PackedDataset, rejected: pa.Table | None = None) -> dict[str, SourceCount]:
    """Per source: samples packed (text-only among them) and rows dropped, by reason.

    Reads only the ``sample_sources`` / ``sample_text_only`` columns of every shard, and the
    rejected files, so ``packed + dropped`` adds up to the rows each source brought in.
    """
    counts: dict[str, SourceCount] = {}
    for i in range(len(ds.shards)):
        table = ds.read_shard(i, columns=["sample_sources", "sample_text_only"])
        sources = pc.list_flatten(table["sample_sources"]).to_pylist()
        text = pc.list_flatten(table["sample_text_only"]).to_pylist()
        for src, is_text in zip(sources, text, strict=True):
            c = counts.setdefault(src, SourceCount())
            c.packed += 1
            c.text_only += bool(is_text)
    rejected = read_rejected(ds) if rejected is None else rejected
    for src, reason in zip(
        rejected["source"].to_pylist(), rejected["reason"].to_pylist(), strict=True
    ):
        counts.setdefault(src or "(unknown)", SourceCount()).dropped[reason] += 1
    return dict(sorted(counts.items()))


def format_sources(counts: dict[str, SourceCount]) -> str:
    rows = [
        {
            "source": src,
            "in": c.total,
            "packed": c.packed,
            "text_only": c.text_only,
            "dropped": sum(c.dropped.values()),
            "drop reasons": ", ".join(f"{r} {n:,}" for r, n in c.dropped.most_common()),
        }
        for src, c in counts.items()
    ]
    return format_table(rows, ["source", "in", "packed", "text_only", "dropped", "drop reasons"])


# ---------------------------------------------------------------------------------------------
# One pack: samples as text, tokens with T/H/W, images
# ---------------------------------------------------------------------------------------------

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "user" | "assistant", or "text" for a text-only document
    content: str  # with one <image> where each image's tokens are


def sample_turns(pack: dict, k: int, tok: NeoTokenizer) -> list[Turn]:
    """The text of sample ``k`` of a pack, decoded from its tokens, one :class:`Turn` per
    ``<|im_start|>..<|im_end|>`` block (a text-only document is one ``text`` turn).

    Control tokens are located by id, so a caption containing the string ``<|im_end|>`` is
    shown as the text it was, and each image becomes one ``<image>`` placeholder.
    """
    cu = pack["cu_seqlens"]
    ids = pack["input_ids"][cu[k] : cu[k + 1]]
    if not ids or ids[0] != IM_START_ID:
        body = ids[:-1] if ids and ids[-1] == ENDOFTEXT_ID else ids
        return [Turn("text", _decode_with_images(body, tok))]
    turns = []
    i = 0
    while i < len(ids):
        if ids[i] != IM_START_ID:
            i += 1  # the "\n" after <|im_end|>
            continue
        end = ids.index(IM_END_ID, i + 1) if IM_END_ID in ids[i + 1 :] else len(ids)
        role, _, content = _decode_with_images(ids[i + 1 : end], tok).partition("\n")
        turns.append(Turn(role, content))
        i = end + 1
    return turns


def _decode_with_images(ids: list[int], tok: NeoTokenizer) -> str:
    """Decode text pieces separately (as the template encoded them) around image runs."""
    parts: list[str] = []
    piece: list[int] = []
    in_image = False
    for t in ids:
        if t == IMG_START_ID:
            parts.append(tok.decode(piece))
            piece, in_image = [], True
        elif t == IMG_END_ID and in_image:
            parts.append(IMAGE_PLACEHOLDER)
            in_image = False
        elif not in_image:
            piece.append(t)
    parts.append(tok.decode(piece))
    return "".join(parts)


def sample_images(pack: dict, k: int) -> list[int]:
    """Ordinals (indices into ``pack["images"]``) of the images of sample ``k``, in order."""
    cu = pack["cu_seqlens"]
    seen: list[int] = []
    for o in pack["image_ordinal"][cu[k] : cu[k + 1]]:
        if o >= 0 and (not seen or seen[-1] != o):
            seen.append(o)
    return seen


def token_rows(
    pack: dict, tok: NeoTokenizer, sample: int | None = None, collapse_images: bool = True
) -> list[dict]:
    """One dict per token (``pos, sample, t, h, w, image, label, token, text, label_token,
    label_text``): ``token`` is the vocabulary string, ``text`` what it decodes to.

    With ``collapse_images`` only the first and last token of each image are kept and the row
    of the first says how many were skipped (``skipped``), so a 256-token image takes 2 rows.
    """
    cu = pack["cu_seqlens"]
    rows: list[dict] = []
    for k in range(len(cu) - 1):
        if sample is not None and k != sample:
            continue
        i = cu[k]
        while i < cu[k + 1]:
            o = pack["image_ordinal"][i]
            end = i + 1
            if o >= 0 and collapse_images:
                while end < cu[k + 1] and pack["image_ordinal"][end] == o:
                    end += 1
            rows.append(_token_row(pack, tok, k, i, skipped=max(0, end - i - 2)))
            if end - i >= 2:
                rows.append(_token_row(pack, tok, k, end - 1))
            i = end
    return rows


def _token_row(pack: dict, tok: NeoTokenizer, k: int, i: int, skipped: int = 0) -> dict:
    label = pack["labels"][i]
    o = pack["image_ordinal"][i]
    return {
        "pos": i,
        "sample": k,
        "t": pack["t_index"][i],
        "h": pack["h_index"][i],
        "w": pack["w_index"][i],
        "image": o if o >= 0 else None,
        "label": label if label != IGNORE_INDEX else None,
        "token": tok.id_to_token(pack["input_ids"][i]),
        "text": _visible(tok.decode([pack["input_ids"][i]])),
        "label_token": tok.id_to_token(label) if label != IGNORE_INDEX else None,
        "label_text": _visible(tok.decode([label])) if label != IGNORE_INDEX else None,
        "skipped": skipped,
    }


def _visible(text: str) -> str:
    """A decoded token with its whitespace made visible (a space, a newline, a tab)."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")


def image_mime(data: bytes) -> tuple[str, str]:
    """``(content type, file extension)`` of encoded image bytes, from Pillow's sniffing."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except (UnidentifiedImageError, OSError):  # not an image Pillow knows: serve as bytes
        return "application/octet-stream", "bin"
    mime = Image.MIME.get(fmt, "application/octet-stream")
    return mime, {"JPEG": "jpg"}.get(fmt, fmt.lower() or "bin")
