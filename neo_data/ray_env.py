"""Starting or joining Ray the same way from every job entrypoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_SETUP_HOOK = "neo_data.console.setup_worker_logging"


def init_ray(num_cpus: int | None = None, log_file: str | os.PathLike | None = None) -> Path | None:
    """Join the cluster a job runs in (``ray job submit`` or ``RAY_ADDRESS``), else start a local
    Ray bound to 127.0.0.1 with no dashboard.

    Starting locally, every Ray port listens on the loopback address only: a laptop or CI box
    never exposes Ray to its network. With ``log_file`` (a local path), a local Ray keeps quiet:
    its logging goes to that file and the console gets the job's own lines only
    (:mod:`neo_data.console`); returns the file's path (else None).
    """
    import ray

    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return None
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    quiet = None
    if log_file is not None:
        from neo_data.console import QuietRay

        quiet = QuietRay(log_file)
        quiet.before_init()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=int(os.environ.get("NEO_RAY_OBJECT_STORE_BYTES", 1 << 30)),
        log_to_driver=True,
        runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK} if quiet else None,
    )
    log.info("started a local Ray with %s CPUs on 127.0.0.1", num_cpus or "all")
    if quiet is None:
        return None
    path = quiet.after_init()
    log.info("Ray's own logging: %s", path)
    return path
