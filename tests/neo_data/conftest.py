"""Fixtures of the data tests: a small packed dataset written with the package's own writers,
in milliseconds and without Ray (for the shard reader, ``verify`` and the loader)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import IGNORE_INDEX, image_token_ids
from neo_data.format.schema import PACKED_SCHEMA_NAME, PACKED_SCHEMA_VERSION, shard_name
from neo_data.format.shards import write_index, write_shard
from neo_data.format.storage import url_to_fs
from neo_data.pack.packing import build_pack
from tests.helpers import image_bytes


def small_sample(name: str, grid: tuple[int, int] | None, color: tuple[int, int, int]) -> dict:
    """One encoded sample: 3 text tokens around one image of ``grid`` (or none), every text
    token after the first supervised."""
    ids = [10, 11] + (image_token_ids(*grid) if grid else []) + [12]
    t, h, w, ordinal = thw_indices(ids, [grid] if grid else [])
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    labels[:-1] = np.where(ordinal[1:] < 0, np.asarray(ids[1:]), IGNORE_INDEX)
    images = [image_bytes(grid[1] * 32, grid[0] * 32, "PNG", color)] if grid else []
    return {
        "sample_id": name, "source": "small", "text_only": grid is None,
        "input_ids": np.asarray(ids, dtype=np.int32), "labels": labels,
        "t_index": t, "h_index": h, "w_index": w, "image_ordinal": ordinal, "images": images,
        "image_heights": [grid[0] * 32] if grid else [], "image_widths": [grid[1] * 32] if grid else [],
    }  # fmt: skip


def write_small_packed(
    url: str, packs_per_shard: list[int], buckets=("low",), fmt="parquet", arrow_compression=None
) -> str:
    """A packed dataset at ``url``: shard ``k`` (bucket ``buckets[k % len(buckets)]``) holds
    ``packs_per_shard[k]`` packs; pack ``j`` of shard ``k`` is ``<bucket>-k-j``, two samples
    (one with a 1x2-token image of colour ``(k, j, 7)``, one text-only). Shards in ``fmt``
    (``parquet`` or ``arrow``, its buffers compressed with ``arrow_compression``)."""
    fs, root = url_to_fs(url)
    infos = []
    for k, n in enumerate(packs_per_shard):
        bucket = buckets[k % len(buckets)]
        rows = [
            build_pack(
                f"{bucket}-{k}-{j}",
                bucket,
                [small_sample(f"s{k}-{j}-a", (1, 2), (k, j, 7)), small_sample(f"s{k}-{j}-b", None, (0, 0, 0))],
            )
            for j in range(n)
        ]  # fmt: skip
        rel = shard_name(bucket, 0, k, fmt)
        infos.append(asdict(write_shard(fs, root, rel, bucket, rows, fmt, arrow_compression)))
    index = {
        "format": PACKED_SCHEMA_NAME,
        "schema_version": PACKED_SCHEMA_VERSION,
        "buckets": [{"name": b} for b in buckets],
        "shards": infos,
    }
    write_index(fs, root, index)
    return url


@pytest.fixture()
def small_packed(tmp_path: Path):
    """``make(packs_per_shard, buckets=("low",), fmt="parquet", arrow_compression=None)`` -> the
    URL of a new small packed dataset."""
    made = iter(range(1000))

    def make(packs_per_shard: list[int], buckets=("low",), **fmt) -> str:
        url = str(tmp_path / f"packed-{next(made)}")
        return write_small_packed(url, packs_per_shard, buckets, **fmt)

    return make
