"""Planning a pack job without Ray, on worked examples: buckets at their bounds, windows cut at
``window_samples``, the text ratio kept exactly and spread over the buckets, the per-pack image
budget cutting packs, packs cut into shards of ``packs_per_shard``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from neo_data.encoding.encode import SampleRejected
from neo_data.manifest import PackSpec
from neo_data.pack.plan import (
    KEEP_ALL,
    LENGTH_SCHEMA,
    KeyCounts,
    Unit,
    bucket_of,
    interleave,
    key_counts,
    plan_units,
    plan_window,
    plan_windows,
    quota_from_passes,
    text_key,
    text_quota,
)
from tests.helpers import text_row, write_curated

BOUNDS = [("low", 64), ("high", 256)]


def test_a_sample_goes_to_the_first_bucket_its_largest_image_fits():
    assert bucket_of(1, BOUNDS) == "low"
    assert bucket_of(64, BOUNDS) == "low"  # the bound is inclusive
    assert bucket_of(65, BOUNDS) == "high"
    assert bucket_of(256, BOUNDS) == "high"
    with pytest.raises(SampleRejected, match="257 tokens is above every bucket") as e:
        bucket_of(257, BOUNDS)
    assert e.value.reason == "image_above_every_bucket"  # a rejected row, not a stopped job


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


def plan_of(table: pa.Table, sp: PackSpec, window: int = 0):
    """A window's plan with the text quota of ``table`` taken as the whole input."""
    return plan_window(table, sp, window, text_quota(table, sp.text_ratio, sp.seed).threshold)


def packed_rows(plan) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for shard in plan.shards:
        out.setdefault(shard.bucket, []).extend(r for pack in shard.packs for _, r in pack)
    return {b: sorted(r) for b, r in out.items()}


def test_the_text_ratio_is_kept_exactly_and_the_rest_is_surplus():
    # 9 multimodal samples at ratio 0.25: text / (text + 9) = 0.25 -> 3 text samples
    table = lengths([("low", 50, 4)] * 9 + [(None, 30, 0)] * 10)
    plan = plan_of(table, spec(), 0)
    text_rows = set(range(9, 19))
    kept = {r for rows in packed_rows(plan).values() for r in rows} & text_rows
    assert len(kept) == 3
    assert len(plan.text_surplus) == 7
    assert {r for _, r in plan.text_surplus} == text_rows - kept  # each text sample once
    assert all(u == "u0" for u, _ in plan.text_surplus)
    # fewer text samples than the ratio allows: all kept; no multimodal samples: all kept
    assert (
        plan_of(lengths([("low", 50, 4)] * 9 + [(None, 30, 0)] * 3), spec(), 0).text_surplus == []
    )
    only_text = plan_of(lengths([(None, 30, 0)] * 5), spec(), 0)
    assert only_text.text_surplus == [] and packed_rows(only_text) == {"low": [0, 1, 2, 3, 4]}


def test_text_samples_are_spread_over_the_buckets_by_their_share():
    # 5 low + 2 high multimodal, ratio 0.25 -> round(7 / 3) = 2 text samples; quotas 1.43 and
    # 0.57: one each by largest remainder (not both to low)
    table = lengths([("low", 50, 4)] * 5 + [("high", 50, 100)] * 2 + [(None, 30, 0)] * 2)
    rows = packed_rows(plan_of(table, spec(), 0))
    assert rows["low"][:5] == [0, 1, 2, 3, 4] and rows["high"][:2] == [5, 6]
    assert len(rows["low"]) == 6 and len(rows["high"]) == 3
    assert sorted(rows["low"][5:] + rows["high"][2:]) == [7, 8]


def test_the_per_pack_image_budget_cuts_packs_the_token_budget_would_not():
    # 7 samples of 20 tokens and 4 image tokens: 140 tokens fit one 1000-token pack, but at
    # most 2 samples fit a budget of 10 image tokens per pack
    table = lengths([("low", 20, 4)] * 7)
    plan = plan_of(table, spec(max_image_tokens=10, text_ratio=0.0), 0)
    packs = [pack for shard in plan.shards for pack in shard.packs]
    assert sorted(len(p) for p in packs) == [1, 2, 2, 2]
    assert [len(p) for p in plan_of(table, spec(text_ratio=0.0), 0).shards[0].packs] == [7]


def test_packs_are_cut_into_shards_of_packs_per_shard():
    table = lengths([("low", 600, 4)] * 5 + [("high", 600, 100)])  # one sample per pack
    plan = plan_of(table, spec(packs_per_shard=2, text_ratio=0.0), 3)
    got = [(s.bucket, s.window, s.index, len(s.packs)) for s in plan.shards]
    assert got == [
        ("low", 3, 0, 2),
        ("low", 3, 1, 2),
        ("low", 3, 2, 1),
        ("high", 3, 0, 1),
    ]
    assert packed_rows(plan) == {"low": [0, 1, 2, 3, 4], "high": [5]}


def file_units(name: str, *rows: int) -> list[Unit]:
    return [Unit(f"{name}{k}", name, k, n, sum(rows[:k])) for k, n in enumerate(rows)]


def test_windows_interleave_the_files_by_their_progress():
    """8 row groups of captions and 4 of texts: windows of 75 rows used to be the captions'
    file then the texts' file (text-only windows); interleaved, every window holds both."""
    units = file_units("a.parquet", *[25] * 8) + file_units("b.parquet", *[25] * 4)
    windows = plan_windows(units, 75)
    assert [sorted({u.file for u in w.units}) for w in windows] == [["a.parquet", "b.parquet"]] * 4
    order = interleave(units)
    assert sorted(order, key=units.index) == units  # each unit once
    for name in ("a.parquet", "b.parquet"):  # within a file, the file's order
        assert [u.row_group for u in order if u.file == name] == sorted(
            u.row_group for u in units if u.file == name
        )


def ids_table(n_caption: int, n_text: int) -> pa.Table:
    return pa.table(
        {
            "sample_id": [f"cap-{i}" for i in range(n_caption)]
            + [f"txt-{i}" for i in range(n_text)],
            "text_only": [False] * n_caption + [True] * n_text,
        }
    )


def test_the_text_quota_is_decided_over_the_whole_input():
    """1000 captions + 1000 texts at 0.3: round(0.3 / 0.7 * 1000) = 429 texts are kept, the
    ones with the smallest seeded keys, whichever windows they land in."""
    ids = ids_table(1000, 1000)
    q = text_quota(ids, 0.3, seed=0)
    assert (q.rows, q.text_rows, q.target) == (2000, 1000, 429)
    kept = {f"txt-{i}" for i in range(1000) if text_key(0, f"txt-{i}") < q.threshold}
    assert len(kept) == 429 and kept == set(sorted(kept, key=lambda s: text_key(0, s)))
    assert pytest.approx(0.3, abs=5e-4) == 429 / (429 + 1000)
    other = text_quota(ids, 0.3, seed=1)
    assert {f"txt-{i}" for i in range(1000) if text_key(1, f"txt-{i}") < other.threshold} != kept
    # split into windows of any shape, the kept set is the same
    sp = spec(text_ratio=0.3)
    table = pa.Table.from_pylist(
        [{"unit_id": "u", "row": i, "sample_id": f"txt-{i}", "source": "t", "text_only": True,
          "bucket": None, "num_tokens": 10, "num_image_tokens": 0} for i in range(1000)],
        schema=LENGTH_SCHEMA,
    )  # fmt: skip
    per_window = set()
    for start in range(0, 1000, 300):
        plan = plan_window(table.slice(start, 300), sp, start, q.threshold)
        per_window |= {f"txt-{r}" for rows in packed_rows(plan).values() for r in rows}
    assert per_window == kept
    assert text_quota(ids_table(0, 5), 0.3, 0).target == 5  # no multimodal rows: all kept
    assert text_quota(ids_table(10, 5), 0.0, 0).target == 0
    assert text_quota(ids_table(10, 2), 0.3, 0).target == 2  # fewer than the quota: all


def test_a_row_no_bucket_fits_is_a_rejected_row_not_a_stopped_window(tmp_path):
    """The packer's per-row path (no Ray): a 20 x 4000 px strip at max_pixels 65536 used to
    resize to 32 x 3616 px (113 tokens, above the 64-token bucket) and raise out of the window;
    now it fits, and a sample above every bucket is rejected with its reason."""
    import pyarrow.parquet as pq

    from neo_data.manifest import parse_manifest
    from neo_data.pack.job import PackWindows
    from tests.helpers import caption_row, image_bytes

    path = write_curated(str(tmp_path / "in.parquet"), [
        caption_row(0, "a thin strip", [image_bytes(4000, 20)]),
        caption_row(1, "a square", [image_bytes(128, 128)]),
    ])  # fmt: skip
    m = parse_manifest(
        f"name: t\nstage: pretrain\ndata: {{curated: [{path}], packed: {tmp_path / 'out'}}}\n"
        "pack: {max_pixels: 65536, min_pixels: 4096, buckets: [{name: all, max_image_tokens: 64}]}",
        "t.yaml",
    )
    stage = PackWindows(m.model_dump_json(), str(tmp_path / "out"))
    unit = plan_units([path])[0]
    samples, rows = {}, []
    stats = stage.encode_unit(unit, samples, rows)
    assert stats["dropped"] == {} and len(samples) == 2
    assert all(r["bucket"] == "all" for r in rows)
    stage.bounds = [
        ("tiny", 16)
    ]  # a bucket the strip (64 tokens) does not fit: the square (16) does
    stats = stage.encode_unit(unit, {}, [])
    assert stats["dropped"] == {"image_above_every_bucket": 1}
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    assert [(r["sample_id"], r["reason"]) for r in rejected] == [
        ("test-000000", "image_above_every_bucket")
    ]


def test_the_quota_by_counting_passes_equals_sorting_every_key():
    """The radix selection the job runs over Ray tasks (``quota_from_passes``, partial counts
    merged in any split) picks the same threshold as sorting every text key, also when ties
    (repeated ids) straddle the threshold and when bins are too full to collect at once."""
    rng = np.random.default_rng(0)
    for trial in range(12):
        n_text, n_cap = int(rng.integers(1, 400)), int(rng.integers(0, 400))
        texts = [f"t{int(rng.integers(0, 50 if trial % 3 == 0 else 10**9))}" for _ in range(n_text)]
        ids = pa.table(
            {
                "sample_id": texts + [f"c{i}" for i in range(n_cap)],
                "text_only": [True] * n_text + [False] * n_cap,
            }
        )
        ratio = float(rng.choice([0.05, 0.3, 0.6]))
        seed = int(rng.integers(0, 5))
        flags = np.array(ids["text_only"].to_pylist())
        cut = sorted(
            rng.choice(np.arange(1, len(flags)), size=min(3, len(flags) - 1), replace=False)
        )
        parts = [ids.slice(a, b - a) for a, b in zip([0, *cut], [*cut, len(flags)], strict=True)]

        def count(prefix, bits, collect, parts=parts, seed=seed):
            total = KeyCounts()
            for part in parts:
                total = total.merge(key_counts(part, seed, prefix, bits, collect))
            return total

        keys = sorted(text_key(seed, s) for s in texts)
        target = n_text if n_cap == 0 else min(n_text, round(ratio / (1 - ratio) * n_cap))
        want = keys[target] if target < n_text else KEEP_ALL
        for collect_keys in (1 << 20, 2, 0):  # 0: every bin is counted down to all 64 bits
            q = quota_from_passes(count, ratio, collect_keys=collect_keys)
            assert (q.rows, q.text_rows, q.target, q.threshold) == (
                n_text + n_cap,
                n_text,
                target,
                want,
            ), (trial, collect_keys)
        assert text_quota(ids, ratio, seed).threshold == want
