"""The cluster configs in cluster/ and the `cluster:` sections of jobs/*.yaml, checked without a cloud.

Launcher YAMLs go through the validation `ray up` runs before it contacts a provider (defaults merged,
then Ray's JSON schema); KubeRay manifests are checked field by field against the ray.io/v1 shapes
raygen relies on. Every Ray version they name must be the installed one.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement

from raygen.errors import UserError
from raygen.jobs import load_job
from raygen.submit import _is_remote_uri, build_submission, check_shared_storage

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
# Where a config names a Ray version: a pip pin, an image tag, KubeRay's rayVersion.
VERSION_PATTERNS = [
    re.compile(r"ray(?:\[[^\]]*\])?==([0-9][0-9.]*)"),
    re.compile(r"rayproject/ray:([0-9][0-9.]*[0-9])"),
    re.compile(r"rayVersion:\s*[\"']?([0-9][0-9.]*)"),
]
IMAGE = re.compile(r"^rayproject/ray:(?P<version>[0-9.]+)-py3\d+(?:-gpu)?$")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize("path", LAUNCHER + KUBERAY, ids=lambda p: p.name)
def test_every_ray_version_mentioned_is_the_installed_one(path):
    text = path.read_text()
    found = [m for pattern in VERSION_PATTERNS for m in pattern.findall(text)]
    assert found, f"{path.name} names no Ray version"
    assert set(found) == {ray.__version__}, f"{path.name}: {sorted(set(found))} vs installed {ray.__version__}"


def test_pyproject_admits_the_installed_ray():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_req,) = [Requirement(d) for d in deps if Requirement(d).name == "ray"]
    assert {"default", "train", "tune", "data"} <= ray_req.extras
    assert ray_req.specifier.contains(ray.__version__), f"pyproject's {ray_req} excludes ray {ray.__version__}"


# ---------------------------------------------------------------- cluster launcher (ray up)


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_passes_ray_up_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(path)
    config = prepare_config(raw)
    validate_config(config)  # Ray's schema: required fields, integer resources, no unknown keys

    provider = raw["provider"]
    assert provider["type"] == path.stem
    required = {"aws": {"region"}, "gcp": {"region", "availability_zone", "project_id"}}[path.stem]
    assert required <= provider.keys()

    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    assert any(t["resources"].get("GPU", 0) > 0 for t in workers.values()), "no GPU worker type"
    assert any(t["resources"].get("GPU", 0) == 0 for t in workers.values()), "no CPU worker type"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0 < node_type["max_workers"] <= raw["max_workers"], name
        assert node_type["node_config"], name

    # raygen comes from this checkout, with Ray pinned so the install cannot replace it.
    assert raw["file_mounts"]["~/raygen"] == "."
    setup = " ".join(raw["setup_commands"])
    assert "-e ~/raygen" in setup and f"ray[default,train,tune,data]=={ray.__version__}" in setup

    # Token auth on every node, with the token `raygen submit` reads locally.
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "dashboard-host" not in " ".join(starts), "the job API must stay on the head's localhost"

    images = [raw["docker"]["image"]] + [t["docker"]["worker_image"] for t in types.values() if "docker" in t]
    assert all(IMAGE.match(image) for image in images), images


# ---------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_shape(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == {"raycluster": "RayCluster", "rayjob": "RayJob"}[path.stem]
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token", "secretName": "raygen-auth-token"}

    head = spec["headGroupSpec"]
    assert {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]} >= {6379, 8265}
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for container in _containers(spec):
        match = IMAGE.match(container["image"])
        assert match and match["version"] == spec["rayVersion"], container["image"]
        if container["image"].endswith("-gpu"):
            assert container["resources"]["limits"]["nvidia.com/gpu"]
        # KubeRay runs custom args instead of its own `ray start` only when the annotation says so.
        if "$KUBERAY_GEN_RAY_START_CMD" in " ".join(container.get("args", [])):
            assert doc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"


def test_raycluster_installs_raygen_on_every_pod():
    spec = _load(KUBERAY[0])["spec"]
    sources = set()
    for container in _containers(spec):
        (start,) = container["args"]
        assert '"raygen @ $RAYGEN_SOURCE"' in start and start.endswith("&& $KUBERAY_GEN_RAY_START_CMD")
        assert f"ray[default,train,tune,data]=={ray.__version__}" in start
        sources |= {e["value"] for e in container["env"] if e["name"] == "RAYGEN_SOURCE"}
    rayjob_env = yaml.safe_load(_load(KUBERAY[1])["spec"]["runtimeEnvYAML"])
    assert sources == {rayjob_env["working_dir"]}, "every pod and the RayJob must install the same raygen"


def test_rayjob_runs_the_quickstart_with_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    doc = _load(KUBERAY[1])
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)  # Ray's own checks: working_dir URI format, pip list, env_vars types
    assert _is_remote_uri(env["working_dir"]), "a RayJob has no local directory to upload"
    assert f"raygen @ {env['working_dir']}" in env["pip"], "install raygen from the same source as the code"

    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["raygen", "run", "jobs/quickstart.yaml"]
    job_file = ROOT / argv[2]
    if not job_file.exists():
        pytest.skip("jobs/quickstart.yaml (issue 5) is not in the checkout yet")
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    job = load_job(job_file, overrides)
    nodes = 1 + sum(g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    check_shared_storage(job.config.storage_path, max(nodes, 2))  # it must survive autoscaling too


# ---------------------------------------------------------------- jobs/*.yaml


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_loads_and_its_cluster_section_is_accepted(path, monkeypatch):
    monkeypatch.delenv("RAYGEN_SHARED_STORAGE", raising=False)
    job = load_job(path)
    submission = build_submission(job, str(path), (), ROOT)  # raises UserError on a bad cluster: key
    assert submission["entrypoint"] == f"raygen run jobs/{path.name}"
    # local.sh clusters (and the tests) have no network: a job file must not ask for pip installs.
    assert "pip" not in submission["runtime_env"] and "uv" not in submission["runtime_env"]


def test_cluster_section_validation_can_fail(tmp_path):
    bad = tmp_path / "jobs" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text((ROOT / "jobs" / "sample_mog.yaml").read_text() + "cluster:\n  entrypoint_num_cpu: 1\n")
    with pytest.raises(UserError, match="unknown key 'cluster.entrypoint_num_cpu'"):
        build_submission(load_job(bad), str(bad), (), tmp_path)
