"""The dedup stage on Ray: the same decisions as the brute-force rule for any partition size and
any number of workers, and a resumed stage writes the same files."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neo_data.curate.dedup import DedupItem, find_duplicates_brute_force
from neo_data.curate.dedup_stage import DEDUP_DIR, run_dedup, unit_duplicates
from neo_data.curate.job import _run_bounded
from neo_data.curate.plan import Unit
from neo_data.curate.rows import sample_id
from neo_data.manifest.curate import CurateSpec

NAMES = ["web", "docs", "other"]
ROWS_PER_UNIT = 40


def _rows(seed: int, n: int) -> list[dict]:
    """Keys of ``n`` candidates: clustered hashes, repeated exact keys, some without either."""
    rng = random.Random(seed)
    centres = [rng.getrandbits(64) for _ in range(n // 6)]
    out = []
    for _ in range(n):
        h = rng.choice(centres)
        for _ in range(rng.randint(0, 7)):
            h ^= 1 << rng.randrange(64)
        out.append({"key": rng.choice([None, f"img:{rng.randrange(n // 3)}"]),
                    "phash": rng.choice([None, h - (1 << 64) if h >= 1 << 63 else h])})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, list[Unit], list[DedupItem]]:
    """Three sources (thresholds 4, 2 and near dedup off) cut into units of candidate files."""
    root = tmp_path_factory.mktemp("cand")
    thresholds = [4, 2, None]
    units, items = [], []
    for s, name in enumerate(NAMES):
        rows = _rows(s, 200)
        for c, start in enumerate(range(0, len(rows), ROWS_PER_UNIT)):
            chunk = rows[start : start + ROWS_PER_UNIT]
            kept = [i for i in range(len(chunk)) if (start + i) % 9 != 4]  # filtered-out rows
            path = root / f"{name}-{c}.parquet"
            pq.write_table(
                pa.table({"row": pa.array([start + i for i in kept], pa.int64()),
                          "_dedup_key": [chunk[i]["key"] for i in kept],
                          "_phash": pa.array([chunk[i]["phash"] for i in kept], pa.int64())}),
                path,
            )  # fmt: skip
            units.append(Unit(f"{name}-0000-{c:05d}", s, str(path), "parquet", start,
                              start + len(chunk), start, path.stat().st_size, None))  # fmt: skip
            for i in kept:
                r = chunk[i]
                thr = thresholds[s] if r["phash"] is not None else None
                items.append(DedupItem(sample_id(name, start + i), r["key"],
                                       r["phash"] if thresholds[s] is not None else None, thr))  # fmt: skip
    return root, units, items


def _spec(partition_rows: int, bands_per_key: int = 2) -> CurateSpec:
    return CurateSpec.model_validate(
        {
            "output": "unused",
            "dedup": {"partition_rows": partition_rows, "bands_per_key": bands_per_key},
            "sources": [
                {"name": "web", "path": "x.parquet", "filters": {"near_dedup_threshold": 4}},
                {"name": "docs", "path": "x.parquet", "filters": {"near_dedup_threshold": 2}},
                {"name": "other", "path": "x.parquet", "filters": {"near_dedup": False}},
            ],
        }
    )


def _decide(units: list[Unit], out: Path, spec: CurateSpec, workers: int) -> dict[str, dict]:
    plan, stats = run_dedup(spec, units, lambda u: u.file, str(out), _run_bounded, workers)
    got: dict[str, dict] = {}
    for u in units:
        got.update(unit_duplicates(str(out), plan.group_of(u), u, NAMES))
    return got


def _as_expected(items: list[DedupItem]) -> dict[str, dict]:
    return {
        sid: {"sample_id": sid, "reason": d.reason, "of": d.of, "distance": d.distance}
        for sid, d in find_duplicates_brute_force(items).items()
    }


@pytest.mark.parametrize(
    ("partition_rows", "bands_per_key", "workers"),
    [(100_000, 2, 1), (400, 2, 2), (333, 1, 2)],
)
def test_stage_equals_the_brute_force_rule(
    inputs, tmp_path, ray_local, partition_rows, bands_per_key, workers
):
    _, units, items = inputs
    spec = _spec(partition_rows, bands_per_key)
    got = _decide(units, tmp_path, spec, workers)
    expected = _as_expected(items)
    assert got == expected
    reasons = {d["reason"] for d in got.values()}
    assert reasons == {"duplicate_exact", "duplicate_near"}
    assert any(d["sample_id"].split("-")[0] != d["of"].split("-")[0] for d in got.values())
    if partition_rows == 400:  # several groups and partitions really ran
        assert len(list((tmp_path / DEDUP_DIR / "decided").glob("*.parquet"))) > 3
        assert len(list((tmp_path / DEDUP_DIR / "part").glob("*.parquet"))) > 20


def test_resume_redoes_only_missing_tasks_and_writes_the_same(inputs, tmp_path, ray_local):
    _, units, _ = inputs
    spec = _spec(400)
    first = _decide(units, tmp_path, spec, 2)
    work = tmp_path / DEDUP_DIR
    decided = {p.name: p.read_bytes() for p in (work / "decided").glob("*.parquet")}
    # a crash in the middle: one pair partition lost with its marker, two decisions missing
    victim = sorted((work / "part").glob("*.parquet"))[3]
    victim.unlink()
    victim.with_suffix(".json").unlink()
    for p in sorted((work / "decided").glob("*.parquet"))[:2]:
        p.unlink()
    kept_mtime = sorted((work / "part").glob("*.parquet"))[0].stat().st_mtime_ns
    assert _decide(units, tmp_path, spec, 1) == first
    assert {p.name: p.read_bytes() for p in (work / "decided").glob("*.parquet")} == decided
    assert sorted((work / "part").glob("*.parquet"))[0].stat().st_mtime_ns == kept_mtime
