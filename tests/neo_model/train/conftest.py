"""Fixtures of the trainer's tests."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture()
def one_rank_group():
    """A one-rank gloo process group in this process (the trainer all-reduces step totals and
    metrics); removed afterwards."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
