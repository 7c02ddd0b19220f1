"""Shared fixtures, and the test tiers: the `ray` and `slow` markers, applied automatically.

A test is marked `ray` (it starts Ray, in this process or a child) when it uses one of
RAY_FIXTURES, or its module sets `pytestmark = pytest.mark.ray`. A check right after each test body
fails any unmarked test that has started Ray in this process (also when a fixture of its own holds it
and shuts it down afterwards), so the marking cannot silently go stale.

A test is also marked `slow`, and with its kind (`faults`, `cluster`, `e2e`, `long`: SLOW_KINDS),
when it uses one of SLOW_FIXTURES (a multi-node or token cluster) or is listed in SLOW. A listed
name that no longer exists in its module fails the collection, so the list cannot go stale either.

Tiers (Makefile): `make test-fast` = -m "not ray and not slow" (in two processes), `make test-ray` =
-m "ray and not slow", `make test-slow` = -m slow, and one target per kind (`make test-faults`, ...);
`make test` runs everything.
"""

import os
import sys

import pytest

from tests.helpers import free_port

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray Train's controller polls its workers every 2 s by default, so each run ends (and each killed
# worker is noticed) up to 2 s late; a missed poll is only an error after 10 min, so polling more often
# in tests changes no outcome. Set before any Ray starts: Ray Train passes it on to its controller.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Credentials for the local S3 server; set before any Ray starts so that its workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Ray workers import functions defined in tests/ by module name: they find `tests` however pytest was
# started (one process or xdist's workers, whose sys.path differs), since they inherit the environment.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

RAY_FIXTURES = {"ray_local", "two_node_cluster", "cluster", "ray_cluster", "ray_with_a_missing_gpu"}
_RAY_BEFORE = pytest.StashKey[bool]()
SLOW_FIXTURES = {"two_node_cluster", "cluster"}  # a simulated 2-node cluster; cluster/local.sh + the job API

# The kinds of slow test, each its own marker (and Makefile target): what a developer reruns after
# touching fault handling, cluster wiring, or a whole workload.
SLOW_KINDS = {
    "faults": "fault injection: real Ctrl-C and kill -9 of raygen runs and workers",
    "cluster": "a simulated multi-node cluster (ray.cluster_utils) or a real `ray start` + job API",
    "e2e": "end to end: whole runs, in a bucket or one raygen process per case",
    "long": "no Ray, but tens of seconds: trains to convergence, several processes, network retries",
}

# module (all its tests) or module::test -> (kind, why it is slow)
SLOW = {
    "test_faults.py": ("faults", "Ctrl-C and kill -9 of whole raygen runs"),
    "test_weightgen_reliability.py": ("faults", "killed zoo / Ray Train workers"),
    "test_sample_job.py::test_killed_worker_still_gives_every_id_exactly_once": ("faults", "a killed sampling worker"),
    "test_quickstart_cluster.py": ("cluster", "the main job on two simulated nodes"),
    "test_workloads_bucket.py": ("e2e", "in a bucket"),
    "test_weightgen_workload.py::test_tiny_tasks_run_end_to_end": ("e2e", "weightgen's four stages"),
    "test_sample_job.py::test_cli_bad_input_is_one_line_and_nonzero": ("e2e", "one raygen process per case"),
    "test_train_loop.py::test_resume_in_a_bucket_matches_local_training": ("e2e", "in a bucket"),
    # no Ray, but the slowest of the rest (measured on 2 cores: 5-70 s each)
    "test_weightgen_autoencoder.py::test_autoencoder_reconstructs_low_rank_zoo": ("long", "trains to convergence"),
    "test_metrics_features.py::test_feature_classifier_learns_digits_and_identical_sets_score_perfectly":
        ("long", "trains to convergence"),
    "test_weightgen_latent.py::test_sampler_with_exact_denoiser_reproduces_gaussian_mean_and_cov":
        ("long", "long sampling"),
    "test_diffusion_sadm.py::test_two_gloo_workers_match_one_process_on_concatenated_batch":
        ("long", "two processes (gloo)"),
    "test_diffusion_sadm.py::test_gated_and_mmd_forms_two_gloo_workers_match_one_process":
        ("long", "two processes (gloo)"),
    "test_storage.py::test_unreachable_endpoint_and_missing_bucket_are_clear_lines":
        ("long", "waits out the S3 client's retries"),
    "test_bad_inputs.py::test_bad_input_is_one_clear_line[bucket-unreachable]": ("long", "the S3 client's retries"),
    "test_bad_inputs.py::test_bad_input_is_one_clear_line[address-not-ray]": ("long", "waits for a Ray that never answers"),
    # a fresh Python process each (torch imported again: 3-4 s)
    "test_models_energy.py::test_models_do_not_import_the_samplers": ("long", "a fresh Python process"),
    "test_contamination_mixing.py::test_contamination_never_imports_ray": ("long", "a fresh Python process"),
    "test_device.py::test_gpu_check_without_a_gpu_stops_with_one_line": ("long", "a fresh Python process"),
    # the slowest numerical checks (2-7 s each on a quiet 2-core machine): `make test-fast` stays
    # under a minute without them
    "test_contamination_parts.py::test_label_agreement_sees_wrong_labels": ("long", "trains a digits classifier"),
    "test_gradvar_estimators.py::test_lr_variance_enumerated_matches_sampled_and_optimal_is_lower":
        ("long", "Monte Carlo variances"),
    "test_cmt_gcl.py::test_gcl_loss_decreases_on_a_separable_toy": ("long", "trains the INN"),
    "test_hypergrad_hypergradient.py::test_ridge_hypergradient_every_solver[neumann-kwargs1]":
        ("long", "the Neumann series to 1e-8"),
    "test_hypergrad_own_problem.py::test_own_ridge_problem_has_the_closed_form_hypergradient[neumann-kwargs5-1e-08]":
        ("long", "the Neumann series to 1e-8"),
    "test_hypergrad_bilevel.py::test_bilevel_reaches_closed_form_optimal_ridge_penalty":
        ("long", "optimises to the closed-form optimum"),
    "test_models_denoiser.py::test_energy_gradient_is_score_and_hessian_symmetric": ("long", "double backward"),
    "test_models_denoiser.py::test_energy_score_supports_hessian_vector_products": ("long", "double backward"),
    "test_hypergrad_protocol.py::test_rho_relative_gives_the_hypergradient_of_the_damped_system_at_rho_times_lambda_max":
        ("long", "power iterations to convergence"),
    "test_hypergrad_protocol.py::test_rho_relative_to_lambda_max_scales_rho_by_the_top_eigenvalue":
        ("long", "power iterations to convergence"),
    "test_parts.py::test_fast_and_full_checks_agree_with_the_oracle_on_random_damage": ("long", "many damaged stores"),
    "test_submit.py::test_unreachable_address_is_one_line": ("long", "waits for a connection that never opens"),
}


def _slow_kind(item) -> str | None:
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "cluster"
    module = item.path.name
    entry = (SLOW.get(module) or SLOW.get(f"{module}::{item.name}")  # one parametrized case, or every case
             or SLOW.get(f"{module}::{getattr(item, 'originalname', item.name)}"))
    return entry[0] if entry else None


def _check_slow_names(items) -> None:
    # against the modules themselves: a run of one test collects only that test of its module
    modules = {item.path.name: item.module for item in items if getattr(item, "module", None) is not None}
    stale = [k for k in SLOW if "::" in k and k.split("::")[0] in modules
             and not hasattr(modules[k.split("::")[0]], k.split("::")[1].split("[")[0])]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {stale}")


def pytest_configure(config):
    for kind, why in SLOW_KINDS.items():
        config.addinivalue_line("markers", f"{kind}: {why} (a kind of slow; marked by tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    _check_slow_names(items)
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
        kind = _slow_kind(item)
        if kind:
            item.add_marker(pytest.mark.slow)
            item.add_marker(getattr(pytest.mark, kind))


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_RAY_BEFORE] = _ray_running()  # a Ray left by an earlier marked test is not this one's
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    # checked right after the test body, while a fixture that started Ray still holds it
    yield
    if item.get_closest_marker("ray") is None and not item.stash[_RAY_BEFORE]:
        assert not _ray_running(), (
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
