"""The `curate:` section of a manifest: where curated data goes, how images are downloaded, which
filters apply, and the sources (each with its own overrides).

A short section is enough::

    curate:
      output: s3://bucket/curated
      sources:
        - name: cc3m
          path: s3://bucket/raw/cc3m/*.parquet      # url + caption columns

Per-source ``filters:`` and ``download:`` override only the keys they name; every other key
keeps the section-level value (which itself defaults to the values below).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator

from neo_data.encoding.images import MAX_DECODE_PIXELS
from neo_data.manifest.base import Strict

_S = TypeVar("_S", bound=Strict)
SourceKind = Literal["caption", "conversation", "text"]
SourceFormat = Literal["parquet", "csv", "jsonl"]
FORMAT_BY_SUFFIX: dict[str, SourceFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
DEFAULT_BOILERPLATE = (
    "image may contain",
    "no description available",
    "click here",
    "click to enlarge",
    "stock photo",
    "stock image",
    "image not found",
    "placeholder",
    "untitled",
    "thumbnail",
    "default image",
    "photo credit",
    "all rights reserved",
)


class FilterSpec(Strict):
    """Filters applied to every row of a source; each has a stable drop reason (``filters.py``)."""

    # images
    max_decode_pixels: Annotated[int, Field(gt=0)] = MAX_DECODE_PIXELS
    min_side: Annotated[int, Field(ge=1)] = 32
    max_side: Annotated[int, Field(ge=1)] = 16_384
    min_pixels: Annotated[int, Field(ge=1)] = 32 * 32
    max_pixels: Annotated[int, Field(ge=1)] = 16_384 * 16_384
    max_aspect_ratio: Annotated[float, Field(ge=1.0)] = 10.0  # long side / short side
    # captions (kind caption) and documents (kind text)
    caption_min_chars: Annotated[int, Field(ge=0)] = 5
    caption_max_chars: Annotated[int, Field(ge=1)] = 4_000
    caption_min_words: Annotated[int, Field(ge=0)] = 2
    caption_max_words: Annotated[int, Field(ge=1)] = 600
    text_min_chars: Annotated[int, Field(ge=0)] = 50
    text_max_chars: Annotated[int, Field(ge=1)] = 2_000_000
    junk_captions: bool = True  # URL- or file-name-like captions, boilerplate phrases
    boilerplate: list[str] = Field(default_factory=lambda: list(DEFAULT_BOILERPLATE))
    # language (py3langid, model inside the wheel); empty list = keep every language
    languages: list[str] = Field(default_factory=list)
    min_language_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    language_min_chars: Annotated[int, Field(ge=0)] = 20  # shorter texts are not judged
    # duplicates, across the whole run (first in source order, then row order, wins)
    exact_dedup: bool = True
    near_dedup: bool = True  # caption samples: perceptual hash (imagehash.phash, 64 bits)
    near_dedup_threshold: Annotated[int, Field(ge=0, le=16)] = 4  # Hamming distance

    @model_validator(mode="after")
    def _ranges(self) -> FilterSpec:
        pairs = [
            ("min_side", "max_side"),
            ("min_pixels", "max_pixels"),
            ("caption_min_chars", "caption_max_chars"),
            ("caption_min_words", "caption_max_words"),
            ("text_min_chars", "text_max_chars"),
        ]
        for lo, hi in pairs:
            # A per-source override holds only some keys: its pairs are checked once merged
            # over the section (CurateSpec._merged_sources), where every key has its value.
            if not {lo, hi} <= self.model_fields_set:
                continue
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} {getattr(self, lo)} > {hi} {getattr(self, hi)}")
        return self


DownloadEngine = Literal["neo", "img2dataset"]


class DownloadSpec(Strict):
    """How images are fetched (img2dataset's conventions: user agent token, X-Robots-Tag).

    ``engine`` picks the function that performs each HTTP request (``neo_data.curate.fetch``):

    * ``neo`` (default): urllib with img2dataset's user agent and opt-out rule, plus a byte cap
      enforced while reading (``Content-Length`` first, then the stream is cut) and a deadline
      per attempt, and ``text/*`` answers refused as ``not_an_image``.
    * ``img2dataset``: img2dataset's own ``downloader.download_image`` for every attempt. It is
      not the default because it is less safe on the open web: it reads every body whole into
      memory (``max_bytes`` can only be checked afterwards), its timeout bounds each socket read
      only (a server dripping bytes holds a thread for as long as it likes: ``deadline_s`` does
      not apply), it reports errors as strings only (status, content type and final URL are not
      recorded) and its import costs each worker process ~9-13 s and ~310 MiB (OpenCV,
      albumentations). Use it to reproduce img2dataset's downloads exactly.
    """

    engine: DownloadEngine = "neo"
    processes: Annotated[int | None, Field(gt=0)] = None  # tasks at once; default one per CPU
    threads: Annotated[int, Field(gt=0, le=1024)] = 64  # concurrent downloads per task
    # pixels decoded at once per worker process, across its download threads (~3-4 bytes each:
    # the default bounds decode memory near 256 MiB; an image above it decodes alone)
    decode_pixels: Annotated[int, Field(gt=0)] = 64_000_000
    rows_per_task: Annotated[int, Field(gt=0)] = 2_000  # one work unit (and output file)
    timeout_s: Annotated[float, Field(gt=0)] = 10.0  # connect and each socket read
    deadline_s: Annotated[float, Field(gt=0)] = 60.0  # a whole attempt (engine neo only)
    retries: Annotated[int, Field(ge=0, le=10)] = 1  # extra attempts on transient failures
    max_bytes: Annotated[int, Field(gt=0)] = 32 << 20  # engine img2dataset: checked after reading
    # Refuse loopback, link-local (cloud metadata), private and reserved addresses at every hop
    # (engine img2dataset: the first hop only). Off only for a crawl of a server of your own,
    # e.g. the demo's and the tests' servers on 127.0.0.1.
    block_private_addresses: bool = True
    user_agent_token: str | None = "neo-curate"
    # X-Robots-Tag directives that opt an image out (img2dataset's defaults); [] disables
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )


class DedupSpec(Strict):
    """How the run-wide dedup stage is cut into Ray tasks (``neo_data.curate.dedup_stage``).

    Every task holds at most about ``partition_rows`` key rows (~100 bytes each at its peak):
    the candidates of the units it reads, or one hash partition of their keys. The driver holds
    counts only. The decisions do not depend on these values or on the number of workers.
    """

    partition_rows: Annotated[int, Field(gt=0)] = 2_000_000
    # near candidates share `bands_per_key` of the hash's bands (the rule in curate/dedup.py):
    # 1 is plain multi-index hashing (fine below ~10M hashes), 2 keeps buckets small at 1e9
    bands_per_key: Annotated[int, Field(ge=1, le=4)] = 2


class ColumnsSpec(Strict):
    """Names of the input columns; every other column is kept in the sample's ``meta``."""

    url: str = "url"  # kind caption
    caption: str = "caption"  # kind caption
    images: str = "images"  # kind conversation: a URL, a list of URLs or a JSON list of URLs
    conversation: str = "conversation"  # JSON [{"role","content"}] with <image> placeholders
    text: str = "text"  # kind text


class SourceSpec(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    path: str | None = None  # a file, directory or glob, local or s3://
    paths: list[str] = Field(default_factory=list)
    format: SourceFormat | None = None  # inferred from the file extension when omitted
    kind: SourceKind = "caption"
    columns: ColumnsSpec = ColumnsSpec()
    filters: FilterSpec | None = None  # only the keys given override the section's filters
    download: DownloadSpec | None = None  # likewise

    @model_validator(mode="after")
    def _paths(self) -> SourceSpec:
        if (self.path is None) == (not self.paths):
            raise ValueError("give exactly one of `path` (one pattern) or `paths` (a list)")
        if self.format is None:
            for p in self.all_paths():
                if PurePosixPath(p).suffix.lower() not in FORMAT_BY_SUFFIX:
                    raise ValueError(
                        f"cannot infer the format of {p!r} from its extension; set "
                        f"`format` to one of parquet, csv, jsonl"
                    )
        return self

    def all_paths(self) -> list[str]:
        return [self.path] if self.path is not None else list(self.paths)


class CurateSpec(Strict):
    output: str  # directory, local or s3://: samples/, rejected/, report.json, _work/
    filters: FilterSpec = FilterSpec()
    download: DownloadSpec = DownloadSpec()
    dedup: DedupSpec = DedupSpec()
    sources: list[SourceSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> CurateSpec:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {dup}")
        return self

    @model_validator(mode="after")
    def _merged_sources(self) -> CurateSpec:
        for i, source in enumerate(self.sources):
            try:
                self.source_filters(source)
                self.source_download(source)
            except ValidationError as e:
                problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
                raise ValueError(
                    f"sources[{i}] ({source.name}): with the section's values: {problems}"
                ) from None
        return self

    def source_filters(self, source: SourceSpec) -> FilterSpec:
        """The section's filters with the source's overrides applied."""
        return _merge(self.filters, source.filters)

    def source_download(self, source: SourceSpec) -> DownloadSpec:
        return _merge(self.download, source.download)


def _merge(base: _S, override: _S | None) -> _S:
    values = base.model_dump()
    if override is not None:
        values.update(override.model_dump(include=override.model_fields_set))
    return type(base).model_validate(values)  # every key set: cross-field rules all apply


def source_format(source: SourceSpec, path: str) -> SourceFormat:
    """The source's format, or the one its file extension names."""
    if source.format is not None:
        return source.format
    suffix = PurePosixPath(path.split("?", 1)[0]).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise ValueError(f"source {source.name}: cannot infer the format of {path!r}")
    return FORMAT_BY_SUFFIX[suffix]
