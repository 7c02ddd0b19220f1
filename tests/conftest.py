"""Shared fixtures, and the test tiers: the `ray` and `slow` markers, applied automatically.

A test is marked `ray` (it starts Ray, in this process or a child) when it uses one of
RAY_FIXTURES, or its module sets `pytestmark = pytest.mark.ray`. The autouse guard fails any
unmarked test that starts Ray in this process, so the marking cannot silently go stale.

A test is also marked `slow` when it uses one of SLOW_FIXTURES (a multi-node or token cluster) or
is listed in SLOW: fault injection, end-to-end runs, and the few Ray-free tests that train or sample
for tens of seconds (`make test-fast` stays under a minute without them). A listed name that no
longer exists in its module fails the collection, so the list cannot go stale either.

Tiers (Makefile): `make test-fast` = -m "not ray and not slow", `make test-ray` = -m "ray and not
slow", `make test-slow` = -m slow; `make test` runs all three.
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
SLOW_FIXTURES = {"two_node_cluster", "cluster"}  # a simulated 2-node cluster; cluster/local.sh + the job API

# module (all its tests) or module::test -> why it is slow
SLOW = {
    "test_faults.py": "fault injection: Ctrl-C and kill -9 of whole raygen runs",
    "test_weightgen_reliability.py": "fault injection: killed zoo / Ray Train workers",
    "test_sample_job.py::test_killed_worker_still_gives_every_id_exactly_once": "fault injection",
    "test_quickstart_cluster.py": "end to end, multi-node (ray.cluster_utils.Cluster)",
    "test_workloads_bucket.py": "end to end, in a bucket",
    "test_weightgen_workload.py::test_tiny_tasks_run_end_to_end": "end to end",
    # no Ray, but the slowest of the rest (measured, -m "not ray", 2 cores under load ~15: 20-70 s each)
    "test_weightgen_autoencoder.py::test_autoencoder_reconstructs_low_rank_zoo": "trains to convergence",
    "test_metrics_features.py::test_feature_classifier_learns_digits_and_identical_sets_score_perfectly":
        "trains to convergence",
    "test_weightgen_latent.py::test_sampler_with_exact_denoiser_reproduces_gaussian_mean_and_cov": "long sampling",
    "test_sample_job.py::test_cli_bad_input_is_one_line_and_nonzero": "end to end: one raygen process per case",
    "test_train_loop.py::test_resume_in_a_bucket_matches_local_training": "end to end, in a bucket",
}


def _slow_reason(item) -> str | None:
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "multi-node or job-submit cluster"
    module = item.path.name
    return SLOW.get(module) or SLOW.get(f"{module}::{getattr(item, 'originalname', item.name)}")


def _check_slow_names(items) -> None:
    # against the modules themselves: a run of one test collects only that test of its module
    modules = {item.path.name: item.module for item in items if getattr(item, "module", None) is not None}
    stale = [k for k in SLOW if "::" in k and k.split("::")[0] in modules
             and not hasattr(modules[k.split("::")[0]], k.split("::")[1])]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {stale}")


def pytest_collection_modifyitems(config, items):
    _check_slow_names(items)
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
        if _slow_reason(item):
            item.add_marker(pytest.mark.slow)


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
