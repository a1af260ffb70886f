"""Session fixtures: a local S3 server (moto) and a local Ray, both on 127.0.0.1 only."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Before anything imports Ray or albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from tests.helpers import REPO, free_port, netns_unavailable  # noqa: E402

# CI runs the property tests on a fixed set of examples (a red CI is reproducible); locally they
# explore new examples every run.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1; AWS_* variables point every client (and Ray workers,
    which inherit the environment) at it. Yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_endpoint):
    """A fresh bucket; yields ``s3://<name>``."""
    import uuid

    import s3fs

    name = f"neo-test-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(name)
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One local Ray for the session (2 CPUs, small object store, no dashboard, loopback)."""
    import ray

    from neo_data.ray_env import init_ray

    os.environ["NEO_RAY_OBJECT_STORE_BYTES"] = str(300 << 20)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster (``ray start --head`` on 127.0.0.1, token auth) that jobs are
    sent to with ``ray job submit``; see tests/raycluster.py. Shared by the session."""
    from tests.raycluster import RayCluster

    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    yield cluster
    cluster.stop()


TINY_MANIFEST = """
name: tiny
stage: {stage}
data:
  curated: [{curated}]
  packed: {packed}
pack:
  seq_len: 384
  max_image_tokens: 64
  min_pixels: 1024
  max_pixels: 4096
  buckets: [{{name: all, max_image_tokens: 4}}]
  text_ratio: 0.25
  packs_per_shard: 4
"""


@pytest.fixture(scope="session")
def tiny_packed(ray_local, tmp_path_factory) -> str:
    """A small real packed dataset (demo captions, conversations and texts; 384-token packs,
    images of at most 64x64 pixels) for training tests."""
    from neo_data.manifest import parse_manifest
    from neo_data.pack.job import run_pack
    from neo_data.synthetic.dataset import write_demo_dataset

    root = tmp_path_factory.mktemp("tiny-train-data")
    write_demo_dataset(str(root / "curated"), captions=48, conversations=16, texts=24, seed=5)
    manifest = parse_manifest(
        TINY_MANIFEST.format(stage="pretrain", curated=root / "curated", packed=root / "packed"),
        "tiny.yaml",
    )
    result = run_pack(manifest)
    assert result.index["totals"]["packs"] >= 8
    return result.output


@pytest.fixture(scope="session")
def demo_packed(ray_local, tmp_path_factory) -> str:
    """The bundled demo set, curated (``<root>/curated``) and packed with manifests/demo.yaml's
    pack settings (``<root>/packed``): a real dataset to browse. Yields ``<root>``."""
    from neo_data.manifest import load_manifest
    from neo_data.pack.job import run_pack
    from neo_data.synthetic.dataset import write_demo_dataset

    root = tmp_path_factory.mktemp("shards-demo")
    write_demo_dataset(str(root / "curated"), captions=24, conversations=12, texts=30, seed=0)
    manifest = load_manifest(
        REPO / "manifests" / "demo.yaml",
        {"data.curated": [str(root / "curated")], "data.packed": str(root / "packed")},
    )
    run_pack(manifest)
    return str(root)


@pytest.fixture(scope="session")
def netns() -> None:
    """Skip (fail under CI) when this machine does not let us create a network namespace
    (``helpers.UNSHARE``). List it first so the check runs before costly fixtures."""
    why = netns_unavailable()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must run this test: run it as root or with CAP_SYS_ADMIN)")
    pytest.skip(why)
