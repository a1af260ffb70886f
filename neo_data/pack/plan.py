"""Planning a pack job (pure but for reading Parquet footers): work units, windows, buckets,
and the deterministic pack plan of one window.

A **unit** is one row group of a curated input file; consecutive units form a **window** of
about ``pack.window_samples`` samples, packed by one Ray Data task (:mod:`neo_data.pack.job`).
A window's plan keeps text-only samples at the manifest's ratio, spreads them over the buckets,
groups each bucket's samples by first-fit decreasing (:mod:`neo_data.pack.packing`) and cuts
the packs into shards.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.format.schema import CURATED_SCHEMA, check_schema, shard_name
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
    unit_id: str
    file: str  # URL as given (local path or s3://...)
    row_group: int
    num_rows: int
    first_row: int  # row of the file where the unit starts


def plan_units(files: list[str]) -> list[Unit]:
    """One unit per Parquet row group, in file order; footers are read in parallel (object
    stores answer slowly but concurrently) and every file's schema is checked up front."""

    def footer(url: str) -> list[Unit]:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_schema(pf.schema_arrow, CURATED_SCHEMA, url)
            meta = pf.metadata
        stem = hashlib.sha1(url.encode()).hexdigest()[:12]
        units, first = [], 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            units.append(Unit(f"{stem}-{rg:05d}", url, rg, n, first))
            first += n
        return units

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [u for units in pool.map(footer, files) for u in units]


@dataclass(frozen=True)
class Window:
    index: int
    units: list[Unit]

    @property
    def window_id(self) -> str:
        return f"w{self.index:05d}"


def plan_windows(units: list[Unit], window_samples: int) -> list[Window]:
    """Consecutive units, cut when a window reaches ``window_samples`` rows (a unit is never
    split, so a window may hold up to one unit more)."""
    windows: list[Window] = []
    current: list[Unit] = []
    rows = 0
    for unit in units:
        current.append(unit)
        rows += unit.num_rows
        if rows >= window_samples:
            windows.append(Window(len(windows), current))
            current, rows = [], 0
    if current:
        windows.append(Window(len(windows), current))
    return windows


def bucket_of(max_tokens_per_image: int, bounds: list[tuple[str, int]]) -> str:
    for name, bound in bounds:
        if max_tokens_per_image <= bound:
            return name
    raise ValueError(f"an image of {max_tokens_per_image} tokens is above every bucket")


# ---------------------------------------------------------------------------------------------
# Planning a window
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardPlan:
    bucket: str
    window: int
    index: int  # shard number within the window and bucket
    packs: list[list[tuple[str, int]]]  # per pack, (unit_id, row) of its samples in order

    @property
    def path(self) -> str:
        return shard_name(self.bucket, self.window, self.index)


@dataclass
class Plan:
    shards: list[ShardPlan] = field(default_factory=list)
    text_surplus: list[tuple[str, int]] = field(default_factory=list)  # (unit_id, row)


def plan_window(lengths: pa.Table, pack: PackSpec, window: int) -> Plan:
    """Deterministic pack plan of one window from its samples' length columns.

    ``lengths`` has :data:`LENGTH_SCHEMA`'s columns in unit order; ``pack`` is the resolved
    pack settings.
    """
    bucket_names = [b.name for b in pack.buckets]
    plan = Plan()
    cols = {c: lengths[c].to_numpy(zero_copy_only=False) for c in lengths.column_names}
    text_only = cols["text_only"].astype(bool)
    text_idx, mm_idx = np.flatnonzero(text_only), np.flatnonzero(~text_only)
    keep_text, surplus = _select_text(text_idx, len(mm_idx), pack.text_ratio, pack.seed, window)
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


def _select_text(
    text_idx: np.ndarray, n_mm: int, ratio: float, seed: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep text-only samples so that text / (text + multimodal) is ``ratio``; a window with no
    multimodal samples keeps all its text. Returns (kept, surplus), chosen by a seeded order."""
    if n_mm == 0:
        return text_idx, text_idx[:0]
    target = int(round(ratio / (1.0 - ratio) * n_mm))
    if len(text_idx) <= target:
        return text_idx, text_idx[:0]
    order = np.random.default_rng([seed, window, 7]).permutation(len(text_idx))
    return np.sort(text_idx[order[:target]]), np.sort(text_idx[order[target:]])


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
