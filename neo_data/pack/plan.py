"""Planning a pack job (pure but for reading Parquet footers): work units, windows, buckets,
and the deterministic pack plan of one window.

A **unit** is one row group of a curated input file. Units of all files are interleaved by
their position in their file (so every window mixes the sources, and text-only files do not form
windows of their own) and cut into **windows** of about ``pack.window_samples`` samples, each
packed by one Ray actor call (:mod:`neo_data.pack.job`). Which text-only samples are kept is
decided once over the whole input (a seeded hash of the sample id under a threshold from the
global counts, found by radix selection over counting passes that tasks run on parts of the
input: :func:`quota_from_passes`), so the text ratio is the manifest's whatever the windows. A
window's plan spreads its kept text over the buckets, groups each bucket's samples by first-fit
decreasing (:mod:`neo_data.pack.packing`) and cuts the packs into shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.encoding.encode import SampleRejected
from neo_data.format.schema import CURATED_SCHEMA, check_schema
from neo_data.format.storage import url_to_fs
from neo_data.manifest import PackSpec
from neo_data.pack.packing import choose_groups

LENGTH_SCHEMA = pa.schema(
    [
        pa.field("unit_id", pa.string()),
        pa.field("row", pa.int32()),  # row within the unit
        pa.field("sample_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("text_only", pa.bool_()),
        pa.field("bucket", pa.string()),  # null for text-only samples (assigned when planning)
        pa.field("num_tokens", pa.int32()),
        pa.field("num_image_tokens", pa.int32()),
    ]
)


# ---------------------------------------------------------------------------------------------
# Work units and windows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One row group of an input file, with what identifies the file's version (its size, and
    its ETag on object stores) so a rerun can tell the unit it planned from a changed one."""

    unit_id: str
    file: str  # URL as given (local path or s3://...)
    row_group: int
    num_rows: int
    first_row: int  # row of the file where the unit starts
    file_size: int = -1  # bytes of the file when planned
    etag: str = ""  # the object store's ETag ("" on local disks)


def plan_units(files: list[str]) -> list[Unit]:
    """One unit per Parquet row group, in file order; footers are read in parallel (object
    stores answer slowly but concurrently) and every file's schema is checked up front."""

    def footer(url: str) -> list[Unit]:
        fs, path = url_to_fs(url)
        info = fs.info(path)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_schema(pf.schema_arrow, CURATED_SCHEMA, url)
            meta = pf.metadata
        size = int(info.get("size") or -1)
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        stem = hashlib.sha1(url.encode()).hexdigest()[:12]
        units, first = [], 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            units.append(Unit(f"{stem}-{rg:05d}", url, rg, n, first, size, etag))
            first += n
        return units

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [u for units in pool.map(footer, files) for u in units]


def read_input_ids(
    units: list[Unit], columns: tuple[str, ...] = ("sample_id", "text_only")
) -> pa.Table:
    """``sample_id`` and ``text_only`` of the rows of ``units``, in unit order (two small
    columns: what the text quota is counted from, and what a window's outputs are recounted
    against). Called per task on a slice of the input, never for the whole input on the driver."""

    def read(unit: Unit) -> pa.Table:
        fs, path = url_to_fs(unit.file)
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).read_row_group(unit.row_group, columns=list(columns))

    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(read, units))
    types = {"sample_id": pa.string(), "text_only": pa.bool_()}
    schema = pa.schema([(c, types[c]) for c in columns])
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


# ---------------------------------------------------------------------------------------------
# The text quota, over the whole input
# ---------------------------------------------------------------------------------------------

KEEP_ALL = 2**64  # a threshold above every key
RADIX_BITS = 16  # a counting pass resolves this many bits of the threshold
COLLECT_KEYS = 1 << 20  # a bin with at most this many keys is collected and sorted instead


@dataclass(frozen=True)
class TextQuota:
    """Keep a text-only sample when ``text_key(seed, sample_id) < threshold``.

    ``target`` texts among ``text_rows`` are kept so that text / (text + multimodal rows) is
    ``pack.text_ratio`` over the input (rows the encoder rejects later are not foreseen); with
    no multimodal rows every text is kept.
    """

    rows: int
    text_rows: int
    target: int
    threshold: int


def text_key(seed: int, sample_id: str) -> int:
    """A seeded 64-bit hash of a sample id: the order in which text samples are kept."""
    digest = hashlib.blake2b(f"{seed}\x00{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class KeyCounts:
    """What one counting pass over a part of the input returns (mergeable, bounded in size):
    its rows and text rows, and among the text keys whose top ``prefix_bits`` bits are
    ``prefix`` either a histogram of the next :data:`RADIX_BITS` bits or the keys themselves."""

    rows: int = 0
    text_rows: int = 0
    hist: np.ndarray | None = None  # int64[2**RADIX_BITS]
    keys: np.ndarray | None = None  # uint64, in no order

    def merge(self, other: KeyCounts) -> KeyCounts:
        def add(a, b, op):
            return b if a is None else a if b is None else op(a, b)

        return KeyCounts(
            self.rows + other.rows,
            self.text_rows + other.text_rows,
            add(self.hist, other.hist, np.add),
            add(self.keys, other.keys, lambda a, b: np.concatenate([a, b])),
        )


def key_counts(
    ids: pa.Table, seed: int, prefix: int = 0, prefix_bits: int = 0, collect: bool = False
) -> KeyCounts:
    """One counting pass over ``ids`` (``sample_id`` / ``text_only`` columns)."""
    flags = ids["text_only"].to_numpy(zero_copy_only=False).astype(bool)
    texts = ids["sample_id"].filter(pa.array(flags)).to_pylist() if flags.any() else []
    keys = np.fromiter((text_key(seed, s) for s in texts), dtype=np.uint64, count=len(texts))
    if prefix_bits:
        keys = keys[(keys >> np.uint64(64 - prefix_bits)) == np.uint64(prefix)]
    out = KeyCounts(len(flags), int(flags.sum()))
    if collect:
        out.keys = keys
    else:
        shift = np.uint64(64 - prefix_bits - RADIX_BITS)
        digits = ((keys >> shift) & np.uint64((1 << RADIX_BITS) - 1)).astype(np.int64)
        out.hist = np.bincount(digits, minlength=1 << RADIX_BITS).astype(np.int64)
    return out


CountPass = Callable[[int, int, bool], KeyCounts]


def quota_from_passes(
    count: CountPass, ratio: float, collect_keys: int = COLLECT_KEYS
) -> TextQuota:
    """The text quota by radix selection over counting passes: ``count(prefix, prefix_bits,
    collect)`` runs :func:`key_counts` over the whole input (in tasks, merged) and returns the
    merged result. The ``target``-th smallest key (0-based) is found 16 bits per pass; once its
    bin holds at most ``collect_keys`` keys they are collected and the key of that rank picked.
    The caller holds one histogram and at most ``collect_keys`` keys, whatever the input's size;
    usually two passes."""
    first = count(0, 0, False)
    n_text, n_mm = first.text_rows, first.rows - first.text_rows
    target = n_text if n_mm == 0 else min(n_text, int(round(ratio / (1.0 - ratio) * n_mm)))
    if target >= n_text:
        return TextQuota(first.rows, n_text, target, KEEP_ALL)
    rank, prefix, bits, hist = target, 0, 0, first.hist
    while True:
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[digit - 1]) if digit else 0
        in_bin = int(hist[digit])
        prefix, bits = (prefix << RADIX_BITS) | digit, bits + RADIX_BITS
        if bits == 64:
            threshold = prefix
            break
        if in_bin <= collect_keys:
            keys = count(prefix, bits, True).keys
            threshold = int(np.partition(keys, rank)[rank])
            break
        hist = count(prefix, bits, False).hist
    return TextQuota(first.rows, n_text, target, threshold)


def text_quota(ids: pa.Table, ratio: float, seed: int) -> TextQuota:
    """The text quota of an input held in memory (its ``sample_id`` / ``text_only`` columns):
    the ``target`` smallest keys are kept (exactly, for unique ids). The pack job computes the
    same quota with :func:`quota_from_passes` over Ray tasks, never holding the ids."""
    return quota_from_passes(lambda p, b, c: key_counts(ids, seed, p, b, c), ratio)


@dataclass(frozen=True)
class Window:
    index: int
    units: list[Unit]

    @property
    def window_id(self) -> str:
        return f"w{self.index:05d}"


def interleave(units: list[Unit]) -> list[Unit]:
    """The units of every file merged by how far into its file each one is (its middle row
    over the file's rows; ties in file order), so consecutive units come from every source in
    proportion to its size. Deterministic; within a file the order is kept."""
    order = {f: k for k, f in enumerate(dict.fromkeys(u.file for u in units))}
    totals: dict[str, int] = {}
    for u in units:
        totals[u.file] = totals.get(u.file, 0) + u.num_rows
    return sorted(
        units,
        key=lambda u: (
            Fraction(2 * u.first_row + u.num_rows, 2 * max(1, totals[u.file])),
            order[u.file],
            u.row_group,
        ),
    )


def plan_windows(units: list[Unit], window_samples: int) -> list[Window]:
    """The units interleaved across files (:func:`interleave`), cut when a window reaches
    ``window_samples`` rows (a unit is never split, so a window may hold up to one unit more)."""
    windows: list[Window] = []
    current: list[Unit] = []
    rows = 0
    for unit in interleave(units):
        current.append(unit)
        rows += unit.num_rows
        if rows >= window_samples:
            windows.append(Window(len(windows), current))
            current, rows = [], 0
    if current:
        windows.append(Window(len(windows), current))
    return windows


def bucket_of(max_tokens_per_image: int, bounds: list[tuple[str, int]]) -> str:
    """The first bucket the sample's largest image fits; a sample that fits none is a rejected
    row (``image_above_every_bucket``), not a stopped job."""
    for name, bound in bounds:
        if max_tokens_per_image <= bound:
            return name
    raise SampleRejected(
        "image_above_every_bucket",
        f"an image of {max_tokens_per_image} tokens is above every bucket "
        f"(the last holds {bounds[-1][1]})",
    )


# ---------------------------------------------------------------------------------------------
# Planning a window
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardPlan:
    bucket: str
    window: int
    index: int  # shard number within the window and bucket
    packs: list[list[tuple[str, int]]]  # per pack, (unit_id, row) of its samples in order


@dataclass
class Plan:
    shards: list[ShardPlan] = field(default_factory=list)
    text_surplus: list[tuple[str, int]] = field(default_factory=list)  # (unit_id, row)


def plan_window(lengths: pa.Table, pack: PackSpec, window: int, text_threshold: int) -> Plan:
    """Deterministic pack plan of one window from its samples' length columns.

    ``lengths`` has :data:`LENGTH_SCHEMA`'s columns in unit order; ``pack`` is the resolved
    pack settings; text-only samples whose :func:`text_key` is below ``text_threshold`` (the
    input's :class:`TextQuota`) are kept, the others are surplus.
    """
    bucket_names = [b.name for b in pack.buckets]
    plan = Plan()
    cols = {c: lengths[c].to_numpy(zero_copy_only=False) for c in lengths.column_names}
    text_only = cols["text_only"].astype(bool)
    text_idx, mm_idx = np.flatnonzero(text_only), np.flatnonzero(~text_only)
    kept = np.array(
        [text_key(pack.seed, cols["sample_id"][i]) < text_threshold for i in text_idx], dtype=bool
    )
    keep_text, surplus = text_idx[kept], text_idx[~kept]
    plan.text_surplus = [(cols["unit_id"][i], int(cols["row"][i])) for i in surplus]
    members = {b: mm_idx[cols["bucket"][mm_idx] == b] for b in bucket_names}
    for b, extra in _spread_text(keep_text, members, bucket_names).items():
        members[b] = np.concatenate([members[b], extra]).astype(np.int64)
    for b in bucket_names:
        idx = members[b]
        if not idx.size:
            continue
        groups = choose_groups(
            cols["num_tokens"][idx],
            cols["num_image_tokens"][idx],
            pack.seq_len,
            pack.max_image_tokens,
            seed=pack.seed + window,
        )
        packs = [
            [(cols["unit_id"][idx[g]], int(cols["row"][idx[g]])) for g in grp] for grp in groups
        ]
        for k, s in enumerate(range(0, len(packs), pack.packs_per_shard)):
            plan.shards.append(ShardPlan(b, window, k, packs[s : s + pack.packs_per_shard]))
    return plan


def _spread_text(
    text_idx: np.ndarray, members: dict[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    """Give each bucket a share of the text samples proportional to its multimodal samples
    (largest remainder), so every bucket keeps the same text ratio. With no multimodal samples
    everything goes to the first bucket."""
    counts = np.array([len(members[b]) for b in names], dtype=np.float64)
    if counts.sum() == 0:
        counts[0] = 1.0
    quota = counts / counts.sum() * len(text_idx)
    share = np.floor(quota).astype(np.int64)
    for j in np.argsort(-(quota - share), kind="stable")[: len(text_idx) - share.sum()]:
        share[j] += 1
    bounds = np.concatenate([[0], np.cumsum(share)])
    return {b: text_idx[bounds[j] : bounds[j + 1]] for j, b in enumerate(names)}
