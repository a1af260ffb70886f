"""The dedup stage of a curation run on Ray: tasks over hash-partitioned Parquet files.

The rule and the per-partition array functions live in :mod:`neo_data.curate.dedup`; this module
cuts the run into tasks and files under ``<output>/_work/dedup/``::

    1. map      one task per **group** of consecutive units (``curate.dedup.partition_rows``
                key rows: 1 + K per candidate, K near keys): reads the candidates' keys (no
                image bytes), writes
                map/<g>-exact.parquet  (partition, exact key, order)
                map/<g>-near.parquet   (partition, band key, value, order, hash, threshold)
                sorted by partition, then map/<g>.json (done)
    2. pairs    one task per **partition** ``p``: reads partition p of every map file, finds the
                exact and near pairs inside it, writes part/<p>.parquet (j's group, j, of,
                distance, reason) sorted by group, then part/<p>.json
    3. resolve  one task per group: reads group g of every part file, keeps one decision per
                sample (exact first, then the earliest), writes decided/<g>.parquet
    4. (job.py) finalize reads its unit's rows of decided/<g>.parquet (:func:`unit_duplicates`)

Partitions: ``ceil(rows * (1 + near keys) / partition_rows)``, from the plan alone (rows counted
as the units' input rows, an upper bound on candidates). The driver holds the units, the group
boundaries and counts, never a row. Every task's output is written atomically before its marker,
so a rerun redoes only unfinished tasks and writes the same files; the decisions are the same for
any number of workers, because each one is a minimum over pairs.
"""

from __future__ import annotations

import json
import math
import resource
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neo_data.curate.dedup import (
    EXACT,
    NEAR,
    ORDER_ROW_BITS,
    REASONS,
    BandScheme,
    exact_key_hash,
    exact_pairs,
    near_pairs,
    order_key,
    resolve,
    split_order,
)
from neo_data.curate.plan import Unit
from neo_data.curate.rows import sample_id
from neo_data.format.schema import WORK_DIR
from neo_data.format.storage import atomic_write, join, table_to_parquet_bytes, url_to_fs
from neo_data.manifest.curate import CurateSpec

DEDUP_DIR = f"{WORK_DIR}/dedup"
EXACT_SCHEMA = pa.schema(
    [pa.field("p", pa.int32()), pa.field("key", pa.string()), pa.field("order", pa.int64())]
)
NEAR_SCHEMA = pa.schema(
    [
        pa.field("p", pa.int32()),
        pa.field("kid", pa.int16()),
        pa.field("value", pa.uint64()),
        pa.field("order", pa.int64()),
        pa.field("phash", pa.uint64()),
        pa.field("thr", pa.int8()),  # -1: this sample is never a near duplicate
    ]
)
PAIR_SCHEMA = pa.schema(
    [
        pa.field("g", pa.int32()),
        pa.field("j", pa.int64()),
        pa.field("of", pa.int64()),
        pa.field("distance", pa.int32()),
        pa.field("reason", pa.int8()),
    ]
)
DECIDED_SCHEMA = pa.schema(
    [
        pa.field("order", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("of", pa.int64()),
        pa.field("distance", pa.int32()),
    ]
)


@dataclass(frozen=True)
class DedupPlan:
    """Groups of units, partitions and the band scheme of one run (from the plan alone)."""

    groups: list[list[Unit]]
    partitions: int
    scheme: BandScheme

    @cached_property
    def starts(self) -> list[int]:
        """The order key where each group starts (groups are in order)."""
        return [order_key(g[0].source, g[0].first_row) for g in self.groups]

    def group_of(self, unit: Unit) -> int:
        return (
            int(np.searchsorted(self.starts, order_key(unit.source, unit.first_row), "right")) - 1
        )


def plan_dedup(spec: CurateSpec, units: list[Unit]) -> DedupPlan:
    filters = [spec.source_filters(s) for s in spec.sources]
    max_t = max((f.near_dedup_threshold for f in filters if f.near_dedup), default=0)
    scheme = BandScheme(max_t, spec.dedup.bands_per_key)
    limit = spec.dedup.partition_rows
    per_group = max(1, limit // (1 + scheme.num_keys))  # each candidate: 1 + K key rows
    groups: list[list[Unit]] = []
    rows = 0
    for u in units:
        n = u.stop - u.start
        if not groups or rows + n > per_group:
            groups.append([])
            rows = 0
        groups[-1].append(u)
        rows += n
    total = sum(u.stop - u.start for u in units)
    partitions = max(1, math.ceil(total * (1 + scheme.num_keys) / limit))
    return DedupPlan(groups, partitions, scheme)


def _path(root: str, *parts: str) -> str:
    return join(root, DEDUP_DIR, *parts)


def _rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _write_sorted(fs, path: str, table: pa.Table, by: str, pieces: int) -> None:
    """Sorted by ``by``, in row groups of about one piece each (readers filter on ``by``)."""
    table = table.sort_by([(by, "ascending")])
    rg = max(1024, math.ceil(table.num_rows / max(1, pieces)))
    atomic_write(fs, path, table_to_parquet_bytes(table, rg))


def _read_piece(fs, path: str, column: str, value: int, schema: pa.Schema) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f, schema=schema, filters=[(column, "=", value)])


# ---------------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------------


def map_group(
    spec_json: str,
    g: int,
    units: list[tuple[Unit, str]],
    plan: tuple[int, int, int],
    output: str,
) -> dict:
    """Stage 1: the keys of group ``g``'s candidates (each unit with its candidates' path),
    cut into partitions."""
    spec = CurateSpec.model_validate_json(spec_json)
    partitions, max_t, bands_per_key = plan
    scheme = BandScheme(max_t, bands_per_key)
    filters = [spec.source_filters(s) for s in spec.sources]
    fs, root = url_to_fs(output)

    def read(unit: tuple[Unit, str]) -> pa.Table:
        u, path = unit
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["row", "_dedup_key", "_phash"])
        f_ = filters[u.source]
        order = np.asarray(t.column("row").to_numpy(), np.int64) | (u.source << ORDER_ROW_BITS)
        thr = f_.near_dedup_threshold if f_.near_dedup else -1
        phash = t.column("_phash") if f_.near_dedup else pa.nulls(t.num_rows, pa.int64())
        return pa.table(
            {
                "order": order,
                "key": t.column("_dedup_key"),
                "phash": phash,
                "thr": pa.array(np.full(t.num_rows, thr, np.int8)),
            }
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = pa.concat_tables(list(pool.map(read, units)))
    ex = rows.filter(rows.column("key").is_valid())
    exact = pa.table(
        {
            "p": (exact_key_hash(ex.column("key")) % np.uint64(partitions)).astype(np.int32),
            "key": ex.column("key").combine_chunks(),
            "order": ex.column("order").combine_chunks(),
        },
        schema=EXACT_SCHEMA,
    )
    nr = rows.filter(rows.column("phash").is_valid())
    phash = nr.column("phash").to_numpy().astype(np.int64).view(np.uint64)
    k = scheme.num_keys
    values = scheme.keys(phash).reshape(-1)
    kid = np.tile(np.arange(k, dtype=np.int16), len(phash))
    near = pa.table(
        {
            "p": scheme.partition(kid, values, partitions).astype(np.int32),
            "kid": kid,
            "value": values,
            "order": np.repeat(nr.column("order").to_numpy(), k),
            "phash": np.repeat(phash, k),
            "thr": np.repeat(nr.column("thr").to_numpy(), k),
        },
        schema=NEAR_SCHEMA,
    )
    _write_sorted(fs, _path(root, "map", f"{g:05d}-exact.parquet"), exact, "p", partitions)
    _write_sorted(fs, _path(root, "map", f"{g:05d}-near.parquet"), near, "p", partitions)
    marker = {"group": g, "candidates": rows.num_rows, "exact_rows": exact.num_rows,
              "near_rows": near.num_rows, "max_rss_mib": _rss_mib()}  # fmt: skip
    atomic_write(fs, _path(root, "map", f"{g:05d}.json"), json.dumps(marker).encode())
    return marker


def pair_partition(p: int, starts: list[int], output: str) -> dict:
    """Stage 2: every pair inside partition ``p`` (one decision per sample found here)."""
    fs, root = url_to_fs(output)
    groups = len(starts)

    def read(name: str, schema: pa.Schema) -> pa.Table:
        paths = [_path(root, "map", f"{g:05d}-{name}.parquet") for g in range(groups)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return pa.concat_tables(
                list(pool.map(lambda x: _read_piece(fs, x, "p", p, schema), paths))
            )

    ex = read("exact", EXACT_SCHEMA)
    ej, eof = exact_pairs(ex.column("key").combine_chunks(), ex.column("order").to_numpy())
    del ex
    nr = read("near", NEAR_SCHEMA)
    nj, nof, nd = near_pairs(
        *(nr.column(c).to_numpy() for c in ("kid", "value", "order", "phash")),
        nr.column("thr").to_numpy().astype(np.int64),
    )
    near_rows = nr.num_rows
    del nr
    j, of, d, reason = resolve(
        np.concatenate([ej, nj]),
        np.concatenate([eof, nof]),
        np.concatenate([np.zeros(len(ej), np.int64), nd]),
        np.concatenate([np.full(len(ej), EXACT, np.int8), np.full(len(nj), NEAR, np.int8)]),
    )
    g = np.searchsorted(np.asarray(starts, np.int64), j, "right") - 1
    pairs = pa.table(
        {"g": g.astype(np.int32), "j": j, "of": of, "distance": d.astype(np.int32),
         "reason": reason.astype(np.int8)},
        schema=PAIR_SCHEMA,
    )  # fmt: skip
    _write_sorted(fs, _path(root, "part", f"{p:05d}.parquet"), pairs, "g", groups)
    marker = {"partition": p, "near_rows": near_rows, "pairs": pairs.num_rows,
              "max_rss_mib": _rss_mib()}  # fmt: skip
    atomic_write(fs, _path(root, "part", f"{p:05d}.json"), json.dumps(marker).encode())
    return marker


def resolve_group(g: int, partitions: int, rows_per_unit: int, output: str) -> dict:
    """Stage 3: one decision per duplicate of group ``g`` from every partition's pairs."""
    fs, root = url_to_fs(output)
    paths = [_path(root, "part", f"{p:05d}.parquet") for p in range(partitions)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        t = pa.concat_tables(
            list(pool.map(lambda x: _read_piece(fs, x, "g", g, PAIR_SCHEMA), paths))
        )
    j, of, d, reason = resolve(*(t.column(c).to_numpy() for c in ("j", "of", "distance", "reason")))
    names = np.array([REASONS[EXACT], REASONS[NEAR]], dtype=object)
    decided = pa.table(
        {"order": j, "reason": names[reason.astype(np.int64)], "of": of,
         "distance": d.astype(np.int32)},
        schema=DECIDED_SCHEMA,
    )  # fmt: skip
    atomic_write(
        fs, _path(root, "decided", f"{g:05d}.parquet"),
        table_to_parquet_bytes(decided, max(1024, rows_per_unit)),
    )  # fmt: skip
    return {"group": g, "duplicates": decided.num_rows, "max_rss_mib": _rss_mib()}


# ---------------------------------------------------------------------------------------------
# The stage (driver: counts only)
# ---------------------------------------------------------------------------------------------


def run_dedup(
    spec: CurateSpec,
    units: list[Unit],
    candidates: Callable[[Unit], str],
    output: str,
    run_bounded: Callable[[Callable[[Any], Any], list, int, str], list[dict]],
    workers: int,
) -> tuple[DedupPlan, dict[str, Any]]:
    """Run (or resume) the three dedup stages; returns the plan and counts for the report."""
    import ray

    fs, root = url_to_fs(output)
    plan = plan_dedup(spec, units)
    groups = range(len(plan.groups))
    stats: dict[str, Any] = {"dedup_groups": len(plan.groups), "dedup_partitions": plan.partitions}
    if all(fs.exists(_path(root, "decided", f"{g:05d}.parquet")) for g in groups):
        return plan, stats
    spec_json = spec.model_dump_json()
    shape = (plan.partitions, plan.scheme.max_threshold, plan.scheme.bands_per_key)
    rss: list[float] = []

    def todo(stage: str, ids: range, suffix: str = ".json") -> list[int]:
        return [i for i in ids if not fs.exists(_path(root, stage, f"{i:05d}{suffix}"))]

    task = ray.remote(map_group).options(num_cpus=1)
    out = run_bounded(
        lambda g: task.remote(
            spec_json, g, [(u, candidates(u)) for u in plan.groups[g]], shape, output
        ), todo("map", groups),
        workers, "dedup map",
    )  # fmt: skip
    rss += [m["max_rss_mib"] for m in out]
    task = ray.remote(pair_partition).options(num_cpus=1)
    starts = plan.starts
    out = run_bounded(
        lambda p: task.remote(p, starts, output),
        todo("part", range(plan.partitions)),
        workers,
        "dedup pairs",
    )
    rss += [m["max_rss_mib"] for m in out]
    stats["dedup_pair_rows"] = sum(m["pairs"] for m in out)  # a sample: once per partition
    task = ray.remote(resolve_group).options(num_cpus=1)
    per_unit = spec.download.rows_per_task
    out = run_bounded(
        lambda g: task.remote(g, plan.partitions, per_unit, output),
        todo("decided", groups, ".parquet"),
        workers,
        "dedup resolve",
    )
    rss += [m["max_rss_mib"] for m in out]
    stats["dedup_duplicates_decided"] = sum(m["duplicates"] for m in out)
    stats["dedup_max_worker_rss_mib"] = max(rss, default=0.0)
    return plan, stats


def unit_duplicates(output: str, plan_group: int, unit: Unit, names: list[str]) -> dict[str, dict]:
    """Sample id -> decision for the duplicates among ``unit``'s rows (finalize's input)."""
    fs, root = url_to_fs(output)
    lo = order_key(unit.source, unit.first_row)
    hi = lo + (unit.stop - unit.start)
    with fs.open(_path(root, "decided", f"{plan_group:05d}.parquet"), "rb") as f:
        t = pq.read_table(f, filters=[("order", ">=", lo), ("order", "<", hi)])
    out = {}
    for r in t.to_pylist():
        src, row = split_order(r["order"])
        of_src, of_row = split_order(r["of"])
        sid = sample_id(names[src], row)
        out[sid] = {"sample_id": sid, "reason": r["reason"],
                    "of": sample_id(names[of_src], of_row), "distance": r["distance"]}  # fmt: skip
    return out


def remove_work(fs, root: str) -> None:
    """Drop the map and pair files (about 16 key rows per candidate); decisions stay."""
    for stage in ("map", "part"):
        base = _path(root, stage)
        if fs.exists(base):
            fs.rm(base, recursive=True)
