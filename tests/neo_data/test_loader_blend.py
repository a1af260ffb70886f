"""Mixtures of packed datasets (``train.data: [{path, weight}, ...]``): the blend order against
a brute-force merge, shares in every prefix, resume, validation."""

from __future__ import annotations

import random
import shutil
from collections import Counter

import pytest
from pydantic import ValidationError

from neo_data.loader import BlendOrder, PackStream
from neo_data.manifest.train import TrainSpec


def brute_force(weights: list[float], n: int) -> list[tuple[int, int]]:
    """The first ``n`` items of the blend: every (dataset, k) sorted by (key, dataset)."""
    order = BlendOrder(weights)
    items = [(order.key(d, k), d, k) for d in range(len(weights)) for k in range(n + 1)]
    return [(d, k) for _, d, k in sorted(items)[:n]]


@pytest.mark.parametrize("seed", range(6))
def test_blend_order_is_the_sorted_merge_of_the_datasets(seed):
    rng = random.Random(seed)
    weights = [rng.choice([0.5, 1, 1, 2, 3, rng.random() + 0.01]) for _ in range(rng.randint(2, 5))]
    order = BlendOrder(weights)
    n = 400
    assert [order.at(p) for p in range(n)] == brute_force(weights, n)
    for d, k in brute_force(weights, n):
        assert order.at(order.rank(d, k)) == (d, k)


def test_every_prefix_holds_each_dataset_within_one_of_its_share():
    weights = [0.7, 0.2, 0.1]
    order = BlendOrder(weights)
    counts = Counter()
    for p in range(1, 1001):
        counts[order.at(p - 1)[0]] += 1
        for d, w in enumerate(weights):
            assert abs(counts[d] - p * w) <= 1, (p, d, counts)


def test_far_positions_cost_what_near_ones_do():
    order = BlendOrder([3, 1])
    p = 10**12
    d, k = order.at(p)
    assert order.rank(d, k) == p
    assert abs(k - p * (0.75 if d == 0 else 0.25)) <= 2


@pytest.mark.parametrize("weights", [[], [1, 0], [1, -2], [float("nan"), 1]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="positive"):
        BlendOrder(weights)


def test_train_data_takes_one_dataset_or_a_mixture():
    base = {"init": {"kind": "random"}, "output": "out", "steps": 1}
    assert TrainSpec(**base).sources("packed/a") == [("packed/a", 1.0)]
    assert TrainSpec(**base, data="packed/b").sources("packed/a") == [("packed/b", 1.0)]
    mix = [{"path": "packed/a", "weight": 3}, {"path": "s3://b/packed", "weight": 1}]
    assert TrainSpec(**base, data=mix).sources("x") == [("packed/a", 3.0), ("s3://b/packed", 1.0)]
    with pytest.raises(ValidationError, match="listed twice"):
        TrainSpec(**base, data=[{"path": "p/", "weight": 1}, {"path": "p", "weight": 2}])
    with pytest.raises(ValidationError, match="greater than 0"):
        TrainSpec(**base, data=[{"path": "p", "weight": 0}])
    with pytest.raises(ValidationError, match="at least 1"):
        TrainSpec(**base, data=[])


def test_a_stream_blends_two_packed_datasets_by_weight_and_resumes_exactly(tiny_packed, tmp_path):
    other = str(tmp_path / "copy")
    shutil.copytree(tiny_packed, other)
    sources = [(tiny_packed, 3.0), (other, 1.0)]
    full = PackStream(sources, seed=1)
    packs = [full.load(p) for p in range(40)]
    counts = Counter(p.dataset for p in packs)
    assert counts == {0: 30, 1: 10}
    # each dataset goes through its own seeded epochs: every pack once before any repeats
    first = [(p.shard, p.index) for p in packs if p.dataset == 0]
    n = min(len(full.orders[0]), len(first))
    assert len(set(first[:n])) == n
    # a resumed stream (start = a checkpoint's cursor) continues with the very same packs
    resumed = PackStream(sources, seed=1, start=17)
    it = iter(resumed)
    again = [next(it) for _ in range(23)]
    assert [(p.dataset, p.pack_id) for p in again] == [(p.dataset, p.pack_id) for p in packs[17:]]
