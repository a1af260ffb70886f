"""On-disk schemas: curated samples (curation writes, packing reads) and packed shards.

One home for both schemas, their versions, and the names of files in a packed dataset.
``neo_data/format/FORMAT.md`` documents the packed format with an annotated example.

Versions are stored in the Arrow schema metadata (``neo.schema`` / ``neo.schema_version``) of
every file, so plain pyarrow shows them and readers refuse a version they do not know.
"""

from __future__ import annotations

import pyarrow as pa

CURATED_SCHEMA_NAME = "neo.curated"
CURATED_SCHEMA_VERSION = 1
PACKED_SCHEMA_NAME = "neo.packed"
PACKED_SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Curated samples: one row per sample. A sample is a caption (one image + text), a conversation
# (turns with `<image>` placeholders, any number of images) or a text-only document.
# ---------------------------------------------------------------------------------------------

SAMPLE_KINDS = ("caption", "conversation", "text")
IMAGE_PLACEHOLDER = "<image>"

IMAGE_TYPE = pa.struct(
    [
        pa.field("bytes", pa.binary(), nullable=False),  # original encoded bytes (no re-encode)
        pa.field("width", pa.int32()),  # as stored, before EXIF orientation
        pa.field("height", pa.int32()),
        pa.field("sha256", pa.string()),  # of `bytes`
    ]
)

# Who wrote a caption: the original alt-text/caption of the source, or a recaptioning model.
PROVENANCE_TYPE = pa.struct(
    [
        pa.field("origin", pa.string()),  # "original" | "recaption"
        pa.field(
            "backend", pa.string()
        ),  # e.g. "transformers", "vllm", "openai", "neo"; null for original
        pa.field("model", pa.string()),  # model id or path
        pa.field("prompt_template", pa.string()),
        pa.field("prompt_sha256", pa.string()),
        pa.field("generation", pa.string()),  # JSON of the generation settings
        pa.field("created_at", pa.string()),  # ISO 8601 UTC
    ]
)

CAPTION_TYPE = pa.struct([pa.field("text", pa.string()), pa.field("provenance", PROVENANCE_TYPE)])

TURN_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

CURATED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # one of SAMPLE_KINDS
        pa.field("text_only", pa.bool_(), nullable=False),
        pa.field("images", pa.list_(IMAGE_TYPE)),
        # kind == "caption": one or more candidate captions; the first is the default.
        pa.field("captions", pa.list_(CAPTION_TYPE)),
        # kind == "conversation": turns; user/system content may hold `<image>` placeholders,
        # one per entry of `images`, in order.
        pa.field("conversation", pa.list_(TURN_TYPE)),
        # kind == "text": a plain document, every token supervised.
        pa.field("text", pa.string()),
        # lineage
        pa.field("source", pa.string(), nullable=False),  # source name from the manifest
        pa.field("url", pa.string()),  # URL or path the sample came from
        pa.field("row", pa.int64()),  # row index in that source
        pa.field("meta", pa.string()),  # JSON of extra source columns
    ],
    metadata={"neo.schema": CURATED_SCHEMA_NAME, "neo.schema_version": str(CURATED_SCHEMA_VERSION)},
)

# ---------------------------------------------------------------------------------------------
# Packed shards: one row per pack (a fixed token budget of whole samples).
# ---------------------------------------------------------------------------------------------

PACKED_SCHEMA = pa.schema(
    [
        pa.field("pack_id", pa.string(), nullable=False),  # "<bucket>-<shard>-<pack in shard>"
        pa.field("bucket", pa.string(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),  # real tokens (no padding is stored)
        pa.field("num_image_tokens", pa.int32(), nullable=False),
        pa.field("num_supervised", pa.int32(), nullable=False),
        # per token, length num_tokens
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),  # next-token targets, -100 = none
        pa.field("t_index", pa.list_(pa.int32()), nullable=False),
        pa.field("h_index", pa.list_(pa.int32()), nullable=False),
        pa.field("w_index", pa.list_(pa.int32()), nullable=False),
        pa.field("image_ordinal", pa.list_(pa.int32()), nullable=False),  # -1 = not an image token
        # per sample: token offsets [0, n1, n1+n2, ..., num_tokens] (FlashAttention cu_seqlens)
        pa.field("cu_seqlens", pa.list_(pa.int32()), nullable=False),
        pa.field("sample_ids", pa.list_(pa.string()), nullable=False),
        pa.field("sample_sources", pa.list_(pa.string()), nullable=False),
        pa.field("sample_text_only", pa.list_(pa.bool_()), nullable=False),
        # per image of the pack, in image_ordinal order: resized, encoded, ready to decode
        pa.field("images", pa.list_(pa.binary()), nullable=False),
        pa.field("image_heights", pa.list_(pa.int32()), nullable=False),  # pixels, multiple of 32
        pa.field("image_widths", pa.list_(pa.int32()), nullable=False),
    ],
    metadata={"neo.schema": PACKED_SCHEMA_NAME, "neo.schema_version": str(PACKED_SCHEMA_VERSION)},
)

# Per-token columns of a packed row (each of length num_tokens), per-image columns (each of
# length len(images)).
TOKEN_COLUMNS = ("input_ids", "labels", "t_index", "h_index", "w_index", "image_ordinal")
IMAGE_COLUMNS = ("images", "image_heights", "image_widths")

# Rows the packer did not pack, with the reason (every input row ends somewhere countable).
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("url", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("input_file", pa.string()),
        pa.field("input_row", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)


class SchemaMismatch(ValueError):
    """A file's schema is not the one this version of neo reads."""


class ShardCorrupt(ValueError):
    """A shard's bytes fail their checksum (Parquet page CRC, IPC pack CRC) or do not parse:
    the file was damaged after it was written."""


def check_schema(schema: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Raise :class:`SchemaMismatch` naming the file and the first field that differs."""
    meta = schema.metadata or {}
    want_name = expected.metadata[b"neo.schema"]
    want_version = expected.metadata[b"neo.schema_version"]
    got_name = meta.get(b"neo.schema")
    got_version = meta.get(b"neo.schema_version")
    if got_name is not None and got_name != want_name:
        raise SchemaMismatch(
            f"{where}: is a {got_name.decode(errors='replace')} file, expected {want_name.decode()}"
        )
    if got_version is not None and got_version != want_version:
        raise SchemaMismatch(
            f"{where}: schema version {got_version.decode(errors='replace')}, this neo reads "
            f"version {want_version.decode()}"
        )
    for field in expected:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            if field.nullable:
                continue  # an optional column may be absent
            raise SchemaMismatch(f"{where}: required column {field.name!r} is missing")
        got = schema.field(idx).type
        if not _compatible(got, field.type):
            raise SchemaMismatch(
                f"{where}: column {field.name!r} has type {got}, expected {field.type}"
            )


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    """Types match up to large/small string, binary and list variants."""
    if got.equals(want):
        return True
    norm = {
        pa.large_string(): pa.string(),
        pa.string_view(): pa.string(),
        pa.large_binary(): pa.binary(),
        pa.binary_view(): pa.binary(),
    }
    if norm.get(got, got).equals(norm.get(want, want)):
        return True
    if pa.types.is_integer(got) and pa.types.is_integer(want):
        return True
    list_like = (pa.types.is_list, pa.types.is_large_list, pa.types.is_list_view)
    if any(f(got) for f in list_like) and any(f(want) for f in list_like):
        return _compatible(got.value_type, want.value_type)
    if pa.types.is_struct(got) and pa.types.is_struct(want):
        for f in want:
            i = got.get_field_index(f.name)
            if i < 0 or not _compatible(got.field(i).type, f.type):
                if i < 0 and f.nullable:
                    continue
                return False
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Names of files in a packed dataset (the only place that spells them)
# ---------------------------------------------------------------------------------------------

INDEX_NAME = "index.json"
REJECTED_DIR = "rejected"
WORK_DIR = "_work"

# A shard is Parquet (the default; object stores) or Arrow IPC (local disks; ``FORMAT.md``).
SHARD_FORMATS = ("parquet", "arrow")
SHARD_SUFFIXES = {"parquet": ".parquet", "arrow": ".arrow"}


def shard_name(bucket: str, window: int, shard: int, fmt: str = "parquet") -> str:
    """Relative path of a shard: ``shards/<bucket>/shard-<window>-<shard in window>.<ext>``
    (``.parquet`` or ``.arrow``, from ``fmt``)."""
    return f"shards/{bucket}/shard-{window:05d}-{shard:04d}{SHARD_SUFFIXES[fmt]}"


def rejected_name(unit_id: str) -> str:
    return f"{REJECTED_DIR}/{unit_id}.parquet"
