"""The cluster configs in cluster/ and the `cluster:` sections of jobs/*.yaml, checked without a cloud.

Launcher YAMLs go through the validation `ray up` runs before it contacts a provider (defaults merged,
then Ray's JSON schema); KubeRay manifests are checked field by field against the ray.io/v1 and core/v1
shapes raygen relies on. The image (cluster/Dockerfile) cannot be built here, so its FROM line and
install steps are resolved from the file: every Ray version anywhere must be the installed one, every
node and pod must run the raygen image and install nothing heavy at start, and every pod must carry
the bucket credentials (service account and the optional key Secret).
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import ray
import torch
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from raygen.errors import UserError
from raygen.jobs import load_job
from raygen.submit import _is_remote_uri, build_submission, check_shared_storage

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"]
SERVICE_ACCOUNT = CLUSTER / "kuberay" / "serviceaccount.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Where a config names a Ray version: a pip pin, an image tag, KubeRay's rayVersion.
VERSION_PATTERNS = [
    re.compile(r"ray(?:\[[^\]]*\])?==([0-9][0-9.]*)"),
    re.compile(r"rayproject/ray:([0-9][0-9.]*[0-9])"),
    re.compile(r"rayVersion:\s*[\"']?([0-9][0-9.]*)"),
]
RAY_PIN = f"ray[default,train,tune,data]=={ray.__version__}"
STOCK_IMAGE = f"rayproject/ray:{ray.__version__}-py311"  # what cluster/Dockerfile builds FROM (CPU)
# The image built from cluster/Dockerfile, tagged with raygen's version (YOUR_REGISTRY is for the user).
RAYGEN_IMAGE = f"YOUR_REGISTRY/raygen:{PYPROJECT['version']}"
GPU_SUFFIX = "-gpu"
CREDENTIALS_SECRET = "raygen-bucket-credentials"
IDENTITY_ANNOTATIONS = {"eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"}
# Installing either at a node's or pod's start is what the image is for (a CUDA torch is several GB).
HEAVY_INSTALL = re.compile(r"\b(pip|uv|conda)\b.*\binstall\b.*(\btorch\b|raygen|~/raygen|-e\s)")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _comments(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pod_specs(spec: dict) -> list[dict]:
    return [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]


def _containers(spec: dict) -> list[dict]:
    return [c for pod in _pod_specs(spec) for c in pod["containers"]]


def _wants_gpu(container: dict) -> bool:
    return bool(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu"))


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize("path", LAUNCHER + KUBERAY, ids=lambda p: p.name)
def test_every_ray_version_mentioned_is_the_installed_one(path):
    text = path.read_text()
    found = [m for pattern in VERSION_PATTERNS for m in pattern.findall(text)]
    assert found, f"{path.name} names no Ray version"
    assert set(found) == {ray.__version__}, f"{path.name}: {sorted(set(found))} vs installed {ray.__version__}"


def test_pyproject_admits_the_installed_ray():
    (ray_req,) = [Requirement(d) for d in PYPROJECT["dependencies"] if Requirement(d).name == "ray"]
    assert {"default", "train", "tune", "data"} <= ray_req.extras
    assert ray_req.specifier.contains(ray.__version__), f"pyproject's {ray_req} excludes ray {ray.__version__}"


# ---------------------------------------------------------------- the image (cluster/Dockerfile)


def _substitute(text: str, args: dict[str, str]) -> str:
    """Docker's build-arg substitution ($X, ${X}, ${X:-default}, ${X:+alternative}) of the ARGs in scope;
    other $names are left to the shell of RUN."""

    def one(match: re.Match) -> str:
        name, op, word = match["name"] or match["bare"], match["op"], match["word"]
        if name not in args:
            return match[0]
        if op == ":-":
            return args[name] or word
        if op == ":+":
            return word if args[name] else ""
        return args[name]

    return re.sub(r"\$(?:\{(?P<name>\w+)(?:(?P<op>:[-+])(?P<word>[^}]*))?\}|(?P<bare>\w+))", one, text)


def _dockerfile(text: str, build_args: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """(the resolved FROM image, [(instruction, resolved arguments)] of its stage): what a build would run.

    ARGs before FROM are global; inside the stage only those declared again are in scope, an ARG without
    a default taking the global value (Docker's rules)."""
    lines = re.sub(r"\\\n", " ", text).splitlines()  # continuation lines joined
    instructions = [line.strip().split(None, 1) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    global_args: dict[str, str] = {}
    scope: dict[str, str] | None = None  # None before FROM
    base, steps = None, []
    for keyword, rest in ((i[0].upper(), i[1] if len(i) > 1 else "") for i in instructions):
        if keyword == "ARG":
            name, has_default, default = rest.partition("=")
            if scope is None:
                global_args[name] = build_args.get(name, default)
            else:
                scope[name] = build_args.get(name, default) if has_default else global_args.get(name, "")
        elif keyword == "FROM":
            assert base is None, "cluster/Dockerfile is one stage"
            base, scope = _substitute(rest, global_args), {}
        else:
            steps.append((keyword, _substitute(rest, scope or {})))
    assert base, "no FROM"
    return base, steps


@pytest.mark.parametrize("gpu", ["", "1"], ids=["cpu", "gpu"])
def test_dockerfile_builds_on_the_installed_ray_and_installs_raygen(gpu):
    base, steps = _dockerfile(DOCKERFILE.read_text(), {"GPU": gpu} if gpu else {})
    assert base == STOCK_IMAGE + (GPU_SUFFIX if gpu else ""), base
    runs = [args for keyword, args in steps if keyword == "RUN"]
    copies = [shlex.split(args) for keyword, args in steps if keyword == "COPY"]

    # torch first, the build matching the image, at the version the tests run with.
    (torch_run,) = [r for r in runs if "torch==" in r]
    assert f"torch=={Version(torch.__version__).base_version}" in torch_run
    # The shell's choice of index, evaluated as the build would (GPU substituted, pip replaced by echo).
    script = torch_run.replace("&& pip install", "&& echo")
    out = subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         check=True).stdout
    assert ("download.pytorch.org/whl/cpu" in out) != bool(gpu), out

    # The project from the build context, with Ray pinned to the image's own in the same install.
    sources = {src for argv in copies for src in argv[1:-1] if not src.startswith("--")}
    assert {"pyproject.toml", "README.md", "raygen", "jobs"} <= sources  # README: pyproject's readme
    (install,) = [r for r in runs if "/home/ray/raygen" in r and "pip install" in r]
    assert f'"{RAY_PIN}"' in install and "-e /home/ray/raygen" in install
    assert f"ray.__version__ == '{ray.__version__}'" in install, "the build must fail if Ray was replaced"
    assert runs.index(torch_run) < runs.index(install)


def test_dockerfile_checks_can_fail():
    text = DOCKERFILE.read_text()
    assert _dockerfile(text.replace(f"RAY_VERSION={ray.__version__}", "RAY_VERSION=2.49.0"), {})[0] != STOCK_IMAGE
    assert _dockerfile(text, {"GPU": "1"})[0].endswith(GPU_SUFFIX)
    assert _dockerfile(text, {"RAY_VERSION": "9.9.9"})[0] == "rayproject/ray:9.9.9-py311"


def _in_build_context(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for pattern in patterns:
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!")
        variants = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            keep = negate
    return keep


def test_dockerignore_keeps_what_the_image_needs_and_nothing_heavy():
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "raygen", "jobs"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    needed = ["pyproject.toml", "README.md", "raygen/cmt/data/gasoline.csv", *tracked]
    assert [f for f in needed if not _in_build_context(f, patterns)] == []
    heavy = [".venv/bin/python", "runs/quickstart/config.json", ".git/HEAD", "benchmarks/results/x.json",
             "raygen/__pycache__/cli.cpython-311.pyc", "tests/test_parts.py"]
    assert [f for f in heavy if _in_build_context(f, patterns)] == []


# ---------------------------------------------------------------- images and start-up installs


def _image_for(gpu: bool) -> str:
    return RAYGEN_IMAGE + (GPU_SUFFIX if gpu else "")


def test_image_tags_match_the_documented_build():
    """The tags the configs pull are the ones cluster/Dockerfile's header builds and pushes."""
    header = _comments(DOCKERFILE)
    built = {m for m in re.findall(r"-t (\S+)", header)}
    assert built == {_image_for(False), _image_for(True)}
    assert re.search(rf"--build-arg GPU=1 -t {re.escape(_image_for(True))}\b", header)
    pushed = set(re.findall(r"docker push (\S+)", header))
    assert pushed == built


@pytest.mark.parametrize("path", LAUNCHER + KUBERAY, ids=lambda p: p.name)
def test_fallback_without_a_registry_is_documented(path):
    """The plain install stays available: the stock Ray image and the pinned pip install, in comments."""
    comments = _comments(path)
    assert STOCK_IMAGE in comments and RAY_PIN in comments
    if path.stem != "rayjob":  # the RayJob has no GPU group
        assert STOCK_IMAGE + GPU_SUFFIX in comments


# ---------------------------------------------------------------- cluster launcher (ray up)


def _launcher_problems(raw: dict, provider: str) -> list[str]:
    """What makes a launcher config run without the raygen image or without bucket credentials."""
    from ray.autoscaler._private.util import prepare_config

    problems = []
    config = prepare_config(copy.deepcopy(raw))  # with Ray's defaults merged, as `ray up` runs it
    types = config["available_node_types"]
    if config["docker"].get("image") != _image_for(False):
        problems.append(f"docker.image {config['docker'].get('image')}")
    for name, node_type in types.items():
        gpu = node_type["resources"].get("GPU", 0) > 0
        image = node_type.get("docker", {}).get("worker_image", config["docker"]["image"])
        if image != _image_for(gpu):
            problems.append(f"{name} runs {image}")
    commands = [*config["setup_commands"], *config["head_setup_commands"], *config["worker_setup_commands"],
                *config.get("initialization_commands", []),
                *(c for t in types.values() for c in t.get("initialization_commands", []))]
    problems += [f"installs at start: {c}" for c in dict.fromkeys(commands) if HEAVY_INSTALL.search(c)]
    for name, node_type in types.items():
        if name == config["head_node_type"]:
            continue  # `ray up` gives the head its own identity (ray-autoscaler-v1 / ray-autoscaler-sa-v1)
        node_config = node_type["node_config"]
        if provider == "aws" and not node_config.get("IamInstanceProfile"):
            problems.append(f"{name} has no instance profile")
        if provider == "gcp":
            accounts = node_config.get("serviceAccounts") or [{}]
            email, scopes = accounts[0].get("email", ""), accounts[0].get("scopes", [])
            in_project = email.endswith(f"@{config['provider']['project_id']}.iam.gserviceaccount.com")
            if not in_project or "https://www.googleapis.com/auth/cloud-platform" not in scopes:
                problems.append(f"{name}'s service account {email!r} (scopes {scopes}) cannot reach the bucket")
    return problems


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

    # Token auth on every node, with the token `raygen submit` reads locally.
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "dashboard-host" not in " ".join(starts), "the job API must stay on the head's localhost"


def _launcher_default_identity(provider: str) -> str:
    """The identity `ray up` creates for the head (the workers reuse it), from Ray's source: importing
    the GCP module needs Google's client libraries."""
    import importlib.util

    source = Path(importlib.util.find_spec(f"ray.autoscaler._private.{provider}.config").origin).read_text()
    names: dict[str, str] = {}  # the constants, in source order (each is built from the ones before)
    for name, expr in re.findall(r"^(RAY|VERSION|DEFAULT_RAY_INSTANCE_PROFILE|DEFAULT_SERVICE_ACCOUNT_ID) = (.+)$",
                                 source, re.M):
        names[name] = eval(expr, {"__builtins__": {}}, names)
    return names["DEFAULT_RAY_INSTANCE_PROFILE" if provider == "aws" else "DEFAULT_SERVICE_ACCOUNT_ID"]


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_nodes_run_the_image_and_reach_the_bucket(path):
    raw = _load(path)
    assert _launcher_problems(raw, path.stem) == []
    # The workers' identity is the one `ray up` creates (and documents the grants for) in the header.
    worker_config = raw["available_node_types"]["cpu_worker"]["node_config"]
    identity = (worker_config["IamInstanceProfile"]["Name"] if path.stem == "aws"
                else worker_config["serviceAccounts"][0]["email"].split("@")[0])
    assert identity == _launcher_default_identity(path.stem), identity
    assert identity in _comments(path)

    # The checks can fail: the old pip-at-start setup, a stock image, a worker without an identity.
    broken = copy.deepcopy(raw)
    broken["setup_commands"] = [f'pip install --quiet "{RAY_PIN}" -e ~/raygen']
    broken["available_node_types"]["gpu_worker"]["docker"]["worker_image"] = STOCK_IMAGE + GPU_SUFFIX
    broken["available_node_types"]["cpu_worker"]["node_config"].pop(
        {"aws": "IamInstanceProfile", "gcp": "serviceAccounts"}[path.stem])
    assert len(_launcher_problems(broken, path.stem)) == 3


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
        # KubeRay runs custom args instead of its own `ray start` only when the annotation says so.
        if "$KUBERAY_GEN_RAY_START_CMD" in " ".join(container.get("args", [])):
            assert doc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"


def _credential_wiring() -> tuple[str, str]:
    """(service account name, GOOGLE_APPLICATION_CREDENTIALS path the Secret is documented to hold)."""
    account = _load(SERVICE_ACCOUNT)
    assert account["apiVersion"] == "v1" and account["kind"] == "ServiceAccount"
    assert IDENTITY_ANNOTATIONS <= account["metadata"]["annotations"].keys()
    (key_path,) = set(re.findall(r"GOOGLE_APPLICATION_CREDENTIALS=(\S+)", _comments(SERVICE_ACCOUNT)))
    assert f"kubectl create secret generic {CREDENTIALS_SECRET}" in _comments(SERVICE_ACCOUNT)
    return account["metadata"]["name"], key_path


def _pod_problems(pod: dict, key_path: str, account: str) -> list[str]:
    """What keeps a pod from the raygen image, from installing nothing, or from the bucket credentials."""
    problems = []
    if pod.get("serviceAccountName") != account:
        problems.append(f"service account {pod.get('serviceAccountName')!r}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["containers"]:
        name = container["name"]
        if container["image"] != _image_for(_wants_gpu(container)):
            problems.append(f"{name} runs {container['image']}")
        start = " ".join(container.get("command", []) + container.get("args", []))
        if HEAVY_INSTALL.search(start):
            problems.append(f"{name} installs at start")
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", [])}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
            ref = env.get(var)
            # optional: pods still start (and use cloud identity) when there is no Secret.
            if ref != {"name": CREDENTIALS_SECRET, "key": var, "optional": True}:
                problems.append(f"{name}: {var} from {ref}")
        # The key file lands where the Secret's GOOGLE_APPLICATION_CREDENTIALS says it is.
        mounted = set()
        for mount in container.get("volumeMounts", []):
            secret = volumes.get(mount["name"], {}).get("secret", {})
            if secret.get("secretName") == CREDENTIALS_SECRET and secret.get("optional") is True:
                mounted |= {f"{mount['mountPath'].rstrip('/')}/{i['path']}" for i in secret.get("items", [])}
        if key_path not in mounted:
            problems.append(f"{name}: {key_path} not mounted from an optional {CREDENTIALS_SECRET} (has {mounted})")
    return problems


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_pod_runs_the_image_with_bucket_credentials(path):
    account, key_path = _credential_wiring()
    spec = _cluster_spec(_load(path))
    pods = _pod_specs(spec)
    assert [p for pod in pods for p in _pod_problems(pod, key_path, account)] == []
    assert any(_wants_gpu(c) for c in _containers(spec)) or path.stem == "rayjob"

    # The checks can fail: the stock image installing raygen at start, no service account, no Secret env.
    broken = copy.deepcopy(pods[-1])
    broken.pop("serviceAccountName")
    container = broken["containers"][0]
    container["image"] = STOCK_IMAGE
    container["args"] = [f'pip install "{RAY_PIN}" "raygen @ URL" && $KUBERAY_GEN_RAY_START_CMD']
    container["env"] = container["env"][1:]
    container["volumeMounts"] = []
    assert len(_pod_problems(broken, key_path, account)) == 5


def test_both_manifests_wire_credentials_the_same_way():
    wiring = []
    for path in KUBERAY:
        pods = _pod_specs(_cluster_spec(_load(path)))
        wiring += [(pod["serviceAccountName"], yaml.safe_dump(pod["volumes"]), yaml.safe_dump(c["env"]),
                    yaml.safe_dump(c["volumeMounts"])) for pod in pods for c in pod["containers"]]
    assert len(set(wiring)) == 1


def test_rayjob_runs_the_quickstart_from_the_image():
    from ray.runtime_env import RuntimeEnv

    doc = _load(KUBERAY[1])
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)  # Ray's own checks: env_vars types, no unknown fields
    # Everything is in the image: nothing to download or install per job.
    assert not {"pip", "uv", "conda", "working_dir", "py_modules"} & env.keys(), env

    # The job file the entrypoint names is one cluster/Dockerfile copies into the image.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["raygen", "run"]
    image_jobs = "/home/ray/raygen/jobs/"
    _, steps = _dockerfile(DOCKERFILE.read_text(), {})
    assert ("COPY", f"--chown=ray:users jobs {image_jobs.rstrip('/')}") in steps
    assert argv[2].startswith(image_jobs)
    job_file = ROOT / "jobs" / argv[2][len(image_jobs):]
    assert job_file.name == "quickstart.yaml"
    if not job_file.exists():
        pytest.skip("jobs/quickstart.yaml (issue 5) is not in the checkout yet")
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    job = load_job(job_file, overrides)
    nodes = 1 + sum(g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    check_shared_storage(job.config.storage_path, max(nodes, 2))  # it must survive autoscaling too
    assert _is_remote_uri(job.config.storage_path)


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
