"""Shared fixtures, and the `ray` marker applied automatically.

A test is marked `ray` (it starts Ray, in this process or a child) when it uses one of
RAY_FIXTURES, or its module sets `pytestmark = pytest.mark.ray`. `make test-fast` runs
`-m "not ray"`. The autouse guard fails any unmarked test that starts Ray in this process, so the
marking cannot silently go stale.
"""

import os

import pytest

from tests.helpers import free_port

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Credentials for the local S3 server; set before any Ray starts so that its workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

RAY_FIXTURES = {"ray_local", "two_node_cluster", "cluster", "ray_cluster"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _ray_marker_is_true(request):
    import sys

    ray = sys.modules.get("ray")
    was_running = ray is not None and ray.is_initialized()
    yield
    if request.node.get_closest_marker("ray") is None and not was_running:
        ray = sys.modules.get("ray")
        assert ray is None or not ray.is_initialized(), (
            "this test started Ray but is not marked: use the ray_local fixture or pytest.mark.ray")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run on one torch thread, as raygen's actors and trial workers do: tiny tensors gain
    nothing from more, and on a 2-core machine extra threads only contend (up to 10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ray_local():
    """A real local Ray (2 CPUs), started once and reused; tests that need a fresh cluster shut it down."""
    import ray

    from raygen import runtime

    if not ray.is_initialized():
        runtime.init(num_cpus=2)
    yield ray


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on 127.0.0.1 (moto in server mode); yields its endpoint `host:port`."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket; yields the storage URI `s3://<bucket>/runs?endpoint_override=...&scheme=http`."""
    import pyarrow.fs as pafs

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    fs = pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", allow_bucket_creation=True)
    fs.create_dir(name)
    return f"s3://{name}/runs?endpoint_override={s3_server}&scheme=http"
