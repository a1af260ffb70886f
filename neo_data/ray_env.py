"""Starting or joining Ray the same way from every job entrypoint."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster a job runs in (``ray job submit`` or ``RAY_ADDRESS``), else start a local
    Ray bound to 127.0.0.1 with no dashboard.

    Starting locally, every Ray port listens on the loopback address only: a laptop or CI box
    never exposes Ray to its network.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=int(os.environ.get("NEO_RAY_OBJECT_STORE_BYTES", 1 << 30)),
        log_to_driver=True,
    )
    log.info("started a local Ray with %s CPUs on 127.0.0.1", num_cpus or "all")
