"""Planning a pack job without Ray, on worked examples: buckets at their bounds, windows cut at
``window_samples``, the text ratio kept exactly and spread over the buckets, the per-pack image
budget cutting packs, packs cut into shards of ``packs_per_shard``."""

from __future__ import annotations

import pyarrow as pa
import pytest

from neo_data.format.schema import shard_name
from neo_data.manifest import PackSpec
from neo_data.pack.plan import LENGTH_SCHEMA, Unit, bucket_of, plan_units, plan_window, plan_windows
from tests.helpers import text_row, write_curated

BOUNDS = [("low", 64), ("high", 256)]


def test_a_sample_goes_to_the_first_bucket_its_largest_image_fits():
    assert bucket_of(1, BOUNDS) == "low"
    assert bucket_of(64, BOUNDS) == "low"  # the bound is inclusive
    assert bucket_of(65, BOUNDS) == "high"
    assert bucket_of(256, BOUNDS) == "high"
    with pytest.raises(ValueError, match="257 tokens is above every bucket"):
        bucket_of(257, BOUNDS)


def units(*rows: int) -> list[Unit]:
    return [Unit(f"u{k}", "f.parquet", k, n, sum(rows[:k])) for k, n in enumerate(rows)]


def test_a_window_closes_when_it_reaches_window_samples():
    def ids(windows):
        return [[u.unit_id for u in w.units] for w in windows]

    assert ids(plan_windows(units(32, 32, 16, 32, 24), 64)) == [["u0", "u1"], ["u2", "u3", "u4"]]
    assert ids(plan_windows(units(32, 32, 16, 32, 24), 65)) == [["u0", "u1", "u2"], ["u3", "u4"]]
    assert ids(plan_windows(units(10, 10), 100)) == [["u0", "u1"]]  # the rest is a window too
    assert [w.window_id for w in plan_windows(units(5, 5, 5), 5)] == ["w00000", "w00001", "w00002"]


def test_units_are_the_row_groups_of_every_file_in_order(tmp_path):
    a = write_curated(str(tmp_path / "a.parquet"), [text_row(i, "t") for i in range(10)], 4)
    b = write_curated(str(tmp_path / "b.parquet"), [text_row(i, "t") for i in range(3)], 4)
    got = [(u.file, u.row_group, u.num_rows, u.first_row) for u in plan_units([a, b])]
    assert got == [(a, 0, 4, 0), (a, 1, 4, 4), (a, 2, 2, 8), (b, 0, 3, 0)]


def spec(**kw) -> PackSpec:
    base = {
        "seq_len": 1000,
        "max_image_tokens": 1000,
        "min_pixels": 1024,
        "max_pixels": 262144,
        "buckets": [{"name": n, "max_image_tokens": b} for n, b in BOUNDS],
        "text_ratio": 0.25,
        "packs_per_shard": 64,
    }
    return PackSpec.model_validate({**base, **kw})


def lengths(samples: list[tuple[str | None, int, int]]) -> pa.Table:
    """``(bucket or None for text-only, tokens, image tokens)`` per sample, one unit."""
    rows = [
        {"unit_id": "u0", "row": i, "sample_id": f"s{i}", "source": "t", "text_only": b is None,
         "bucket": b, "num_tokens": n, "num_image_tokens": img}
        for i, (b, n, img) in enumerate(samples)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=LENGTH_SCHEMA)


def packed_rows(plan) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for shard in plan.shards:
        out.setdefault(shard.bucket, []).extend(r for pack in shard.packs for _, r in pack)
    return {b: sorted(r) for b, r in out.items()}


def test_the_text_ratio_is_kept_exactly_and_the_rest_is_surplus():
    # 9 multimodal samples at ratio 0.25: text / (text + 9) = 0.25 -> 3 text samples
    table = lengths([("low", 50, 4)] * 9 + [(None, 30, 0)] * 10)
    plan = plan_window(table, spec(), 0)
    text_rows = set(range(9, 19))
    kept = {r for rows in packed_rows(plan).values() for r in rows} & text_rows
    assert len(kept) == 3
    assert len(plan.text_surplus) == 7
    assert {r for _, r in plan.text_surplus} == text_rows - kept  # each text sample once
    assert all(u == "u0" for u, _ in plan.text_surplus)
    # fewer text samples than the ratio allows: all kept; no multimodal samples: all kept
    assert (
        plan_window(lengths([("low", 50, 4)] * 9 + [(None, 30, 0)] * 3), spec(), 0).text_surplus
        == []
    )
    only_text = plan_window(lengths([(None, 30, 0)] * 5), spec(), 0)
    assert only_text.text_surplus == [] and packed_rows(only_text) == {"low": [0, 1, 2, 3, 4]}


def test_text_samples_are_spread_over_the_buckets_by_their_share():
    # 5 low + 2 high multimodal, ratio 0.25 -> round(7 / 3) = 2 text samples; quotas 1.43 and
    # 0.57: one each by largest remainder (not both to low)
    table = lengths([("low", 50, 4)] * 5 + [("high", 50, 100)] * 2 + [(None, 30, 0)] * 2)
    rows = packed_rows(plan_window(table, spec(), 0))
    assert rows["low"][:5] == [0, 1, 2, 3, 4] and rows["high"][:2] == [5, 6]
    assert len(rows["low"]) == 6 and len(rows["high"]) == 3
    assert sorted(rows["low"][5:] + rows["high"][2:]) == [7, 8]


def test_the_per_pack_image_budget_cuts_packs_the_token_budget_would_not():
    # 7 samples of 20 tokens and 4 image tokens: 140 tokens fit one 1000-token pack, but at
    # most 2 samples fit a budget of 10 image tokens per pack
    table = lengths([("low", 20, 4)] * 7)
    plan = plan_window(table, spec(max_image_tokens=10, text_ratio=0.0), 0)
    packs = [pack for shard in plan.shards for pack in shard.packs]
    assert sorted(len(p) for p in packs) == [1, 2, 2, 2]
    assert [len(p) for p in plan_window(table, spec(text_ratio=0.0), 0).shards[0].packs] == [7]


def test_packs_are_cut_into_shards_of_packs_per_shard():
    table = lengths([("low", 600, 4)] * 5 + [("high", 600, 100)])  # one sample per pack
    plan = plan_window(table, spec(packs_per_shard=2, text_ratio=0.0), 3)
    got = [(s.bucket, s.window, s.index, len(s.packs), s.path) for s in plan.shards]
    assert got == [
        ("low", 3, 0, 2, shard_name("low", 3, 0)),
        ("low", 3, 1, 2, shard_name("low", 3, 1)),
        ("low", 3, 2, 1, shard_name("low", 3, 2)),
        ("high", 3, 0, 1, shard_name("high", 3, 0)),
    ]
    assert packed_rows(plan) == {"low": [0, 1, 2, 3, 4], "high": [5]}
