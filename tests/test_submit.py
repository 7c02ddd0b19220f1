"""`raygen submit` / `raygen jobs` against a real Ray cluster started by cluster/local.sh.

One module-scoped cluster (head + 1 worker, token auth on, 127.0.0.1, its own temp dir and
token file) serves every test; `local.sh down` runs even when a test fails. The real
~/.ray/auth_token is never read or written: every CLI call gets RAY_AUTH_TOKEN_PATH (or a fake
HOME) pointing into tmp dirs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from raygen.auth import find_token
from raygen.errors import UserError
from raygen.submit import check_shared_storage, check_submit_storage
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAYGEN = str(BIN / "raygen")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                        "RAYGEN_SHARED_STORAGE", "RAY_AUTH_MODE")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


# ---------------------------------------------------------------- no cluster needed


def test_find_token_order_and_errors(tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    token_file = tmp_path / "tok"
    token_file.write_text("  file-token \n")
    assert find_token({"HOME": str(tmp_path)}).value == "home-token"
    assert find_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(token_file)}).value == "file-token"
    both = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_AUTH_TOKEN": "env-token"}
    assert find_token(both).value == "env-token"
    assert find_token({"HOME": str(tmp_path / "nobody")}) is None
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH"):
        find_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_check_shared_storage(monkeypatch):
    monkeypatch.delenv("RAYGEN_SHARED_STORAGE", raising=False)
    check_shared_storage("runs", 1)  # one node: anything goes
    check_shared_storage("s3://bucket/runs", 4)
    check_shared_storage("gs://bucket/runs", 4)
    for local in ("runs", "/data/runs", "file:///data/runs"):
        with pytest.raises(UserError, match="node-local.*4 nodes"):
            check_shared_storage(local, 4)
    monkeypatch.setenv("RAYGEN_SHARED_STORAGE", f"/mnt/other{os.pathsep}/mnt/nfs")
    check_shared_storage("/mnt/nfs/runs", 2)
    check_shared_storage("/mnt/nfs", 2)
    with pytest.raises(UserError):
        check_shared_storage("/mnt/nfsx/runs", 2)  # a prefix match must end at a path separator
    with pytest.raises(UserError):
        check_shared_storage("runs", 2)  # relative: each node resolves it on its own disk


def test_submit_refuses_relative_storage_path():
    with pytest.raises(UserError, match="relative"):
        check_submit_storage("runs")
    check_submit_storage("/shared/runs")
    check_submit_storage("s3://bucket/runs")


def test_unreachable_address_is_one_line(tmp_path):
    token = tmp_path / "tok"
    token.write_text("x" * 32)
    result = subprocess.run(
        [RAYGEN, "jobs", "list", "--address", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, env=_clean_env(RAY_AUTH_TOKEN_PATH=str(token)), timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot reach the Ray job API"), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_job_file_fails_before_contacting_a_cluster(tmp_path):
    job = ROOT / "jobs" / "sample_mog.yaml"
    result = subprocess.run(
        [RAYGEN, "submit", str(job), "--set", "no_such_key=1", "--address", "http://127.0.0.1:1"],
        capture_output=True, text=True, env=_clean_env(), timeout=120, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "unknown config key 'no_such_key'" in result.stderr and "Traceback" not in result.stderr


PRIVATE_KEY = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n"  # split: this file is uploaded too


def _project(tmp_path: Path, cluster_section: str = "") -> tuple[Path, object]:
    from raygen.jobs import load_job

    root = tmp_path / "project"
    (root / "jobs").mkdir(parents=True)
    job = root / "jobs" / "s.yaml"
    job.write_text((ROOT / "jobs" / "sample_mog.yaml").read_text() + cluster_section)
    return root, load_job(job, ["storage_path=/shared/runs"])


def test_default_excludes_keep_credential_files_out_of_the_upload(tmp_path):
    from raygen.submit import DEFAULT_EXCLUDES, _excluded, build_submission

    root, job = _project(tmp_path)
    secrets = [".env", ".env.local", ".aws/credentials", ".ssh/id_rsa", ".ssh/config", "id_ed25519.pub", "tls/server.pem",
               "deploy/client.key", ".netrc", ".git-credentials", ".kube/config", ".docker/config.json"]
    for rel in secrets:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(PRIVATE_KEY)
    submission = build_submission(job, str(root / "jobs" / "s.yaml"), (), root)  # excluded: not refused
    for rel in secrets:
        assert _excluded(Path(rel), submission["runtime_env"]["excludes"]), rel
    assert not _excluded(Path("jobs/s.yaml"), DEFAULT_EXCLUDES) and not _excluded(Path("raygen/keys.py"), DEFAULT_EXCLUDES)


@pytest.mark.parametrize("content", [PRIVATE_KEY, '{"type": "service_account", "private_key": "' + PRIVATE_KEY + '"}',
                                     "[default]\naws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"])
def test_a_credential_file_the_excludes_miss_is_refused(tmp_path, content):
    from raygen.submit import build_submission

    root, job = _project(tmp_path)
    (root / "deploy").mkdir()
    (root / "deploy" / "gcp.json").write_text(content)
    with pytest.raises(UserError, match="refusing to upload deploy/gcp.json: it holds credentials"):
        build_submission(job, str(root / "jobs" / "s.yaml"), (), root)
    (root / "deploy" / "gcp.json").write_text("aws_secret_access_key: read it from the environment\n")
    build_submission(job, str(root / "jobs" / "s.yaml"), (), root)  # a mention is not a key


def test_secrets_never_reach_the_job_table(tmp_path):
    from raygen.jobs import load_job
    from raygen.submit import build_submission

    section = "cluster:\n  runtime_env:\n    env_vars:\n      AWS_SECRET_ACCESS_KEY: abc\n"
    root, job = _project(tmp_path, section)
    with pytest.raises(UserError, match="env_vars sets AWS_SECRET_ACCESS_KEY, a credential"):
        build_submission(job, str(root / "jobs" / "s.yaml"), (), root)
    with pytest.raises(UserError, match="config key 'storage_path' holds credentials") as caught:
        load_job(ROOT / "jobs" / "sample_mog.yaml", ["storage_path=s3://AKIAX:s3cr3t@bucket/runs"])
    assert "s3cr3t" not in str(caught.value)
    root, job = _project(tmp_path / "b", "cluster:\n  metadata:\n    note: s3://AKIAX:s3cr3t@bucket/x\n")
    with pytest.raises(UserError, match="holds credentials"):
        build_submission(job, str(root / "jobs" / "s.yaml"), (), root)


# ---------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster():
    # A short dir: Ray's unix socket paths live under it and have a length limit.
    state = Path(tempfile.mkdtemp(prefix="rgc-"))
    token = state / "token"
    token.write_text("raygen-test-" + os.urandom(16).hex())
    env = _clean_env(RAYGEN_LOCAL_CLUSTER_DIR=str(state / "c"), RAY_AUTH_TOKEN_PATH=str(token),
                     RAY_BIN=str(BIN / "ray"))
    try:
        up = subprocess.run([str(ROOT / "cluster" / "local.sh"), "up", "--workers", "1", "--cpus", "2"],
                            capture_output=True, text=True, env=env, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        exports = subprocess.run([str(ROOT / "cluster" / "local.sh"), "env"], capture_output=True, text=True,
                                 env=env, check=True).stdout
        address = next(line.split("=", 1)[1] for line in exports.splitlines() if "RAY_API_SERVER_ADDRESS" in line)
        yield {"address": address, "env": env, "state": state, "token": token}
    finally:
        subprocess.run([str(ROOT / "cluster" / "local.sh"), "down"], env=env, timeout=120,
                       capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def raygen(cluster, *args, env=None, timeout=240):
    return subprocess.run([RAYGEN, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=env or {**cluster["env"], "RAY_API_SERVER_ADDRESS": cluster["address"]})


def test_status_and_job_api_bound_to_loopback(cluster):
    status = subprocess.run([str(ROOT / "cluster" / "local.sh"), "status"], capture_output=True, text=True,
                            env=cluster["env"])
    assert status.returncode == 0 and "up: 2 node(s)" in status.stdout, status.stdout
    port = int(cluster["address"].rsplit(":", 1)[1])
    non_loopback = [ip for ip in socket.gethostbyname_ex(socket.gethostname())[2] if not ip.startswith("127.")]
    for ip in non_loopback:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((ip, port)) != 0, f"job API answers on {ip}"


def test_request_without_token_gets_401_and_wrong_token_403(cluster):
    url = f"{cluster['address']}/api/jobs/"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 403
    good = {"Authorization": f"Bearer {cluster['token'].read_text()}"}
    assert requests.get(url, headers=good, timeout=30).status_code == 200


def test_missing_and_wrong_token_fail_cleanly(cluster, tmp_path):
    env = {**cluster["env"], "RAY_API_SERVER_ADDRESS": cluster["address"], "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN_PATH")
    missing = raygen(cluster, "jobs", "list", env=env)
    assert missing.returncode == 2
    assert "requires an auth token and none was found" in missing.stderr and "Traceback" not in missing.stderr
    wrong = raygen(cluster, "submit", "jobs/sample_mog.yaml", "--set", f"storage_path={tmp_path}",
                   env={**env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert wrong.returncode == 2
    assert "rejected the auth token from RAY_AUTH_TOKEN" in wrong.stderr and "Traceback" not in wrong.stderr


def test_multi_node_cluster_refuses_node_local_storage(cluster, tmp_path):
    result = raygen(cluster, "submit", "jobs/sample_mog.yaml", "--set", f"storage_path={tmp_path}")
    assert result.returncode == 2
    assert "node-local but this cluster has 2 nodes" in result.stderr


def test_submit_succeeds_and_writes_the_run_dir_in_a_bucket(cluster, bucket, tmp_path):
    """One submission checks both the job path and bucket storage (the storage a multi-node cluster
    needs); local shared storage (RAYGEN_SHARED_STORAGE) is submitted by the failing and stopped jobs below."""
    from raygen import storage

    result = raygen(cluster, "submit", "jobs/sample_mog.yaml", "--set", "n_samples=100", "--set", "chunk_size=50",
                    "--set", f"storage_path={bucket}", env={**cluster["env"], "RAY_API_SERVER_ADDRESS": cluster["address"]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert_quiet(result.stdout + result.stderr)
    job_id = result.stdout.split("job ", 1)[1].split()[0]
    assert f"job {job_id} SUCCEEDED" in result.stdout
    run = storage.resolve(storage.join(bucket, "sample_mog"))
    assert storage.exists(run.child("config.json")) and storage.exists(run.child("report.json"))
    assert len([n for n in storage.listdir(run.child("samples")) if n.endswith(".parquet")]) == 2
    assert not (ROOT / "s3:").exists() and not (tmp_path / "s3:").exists()
    logs = raygen(cluster, "jobs", "logs", job_id)
    assert logs.returncode == 0 and "done: sample run 'sample_mog'" in logs.stdout
    listed = raygen(cluster, "jobs", "list")
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout


def assert_quiet(output: str) -> None:
    """A default run shows raygen's lines only: no library warnings, SDK INFO logs or C++ core-worker lines."""
    noisy = [line for line in output.splitlines() if any(w in line for w in ("Warning", "INFO", "core_worker"))]
    assert not noisy, noisy


def test_failing_job_exits_nonzero_with_the_jobs_error(cluster, tmp_path):
    # Valid here (any string may name a checkpoint dir), wrong on the cluster: no such target or dir.
    env = {**cluster["env"], "RAY_API_SERVER_ADDRESS": cluster["address"], "RAYGEN_SHARED_STORAGE": str(tmp_path)}
    result = raygen(cluster, "submit", "jobs/sample_mog.yaml", "--set", "model=/nonexistent/checkpoint",
                    "--set", f"storage_path={tmp_path}", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: config key 'model'" in result.stdout  # the job's own one-line error, from its logs
    assert "FAILED" in result.stderr


def test_stop_a_running_job(cluster, tmp_path):
    env = {**cluster["env"], "RAY_API_SERVER_ADDRESS": cluster["address"], "RAYGEN_SHARED_STORAGE": str(tmp_path)}
    submitted = raygen(cluster, "submit", "jobs/sample_mog.yaml", "--no-wait", "--set", "n_samples=2000000",
                       "--set", f"storage_path={tmp_path}", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split("job ", 1)[1].split()[0]
    for _ in range(120):  # wait until the job is really running before stopping it
        if "RUNNING" in raygen(cluster, "jobs", "status", job_id).stdout:
            break
        time.sleep(0.5)
    stopped = raygen(cluster, "jobs", "stop", job_id)
    assert stopped.returncode == 0 and f"job {job_id} STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    status = raygen(cluster, "jobs", "status", job_id)
    assert status.returncode == 1 and "STOPPED" in status.stdout


def test_unknown_job_id_is_one_line(cluster):
    result = raygen(cluster, "jobs", "status", "raygen-no-such-job")
    assert result.returncode == 2
    assert "no job 'raygen-no-such-job'" in result.stderr and "Traceback" not in result.stderr


def test_run_with_address_joins_the_token_cluster(cluster, tmp_path):
    """`raygen run --address host:port` drives a job from here on the token-protected cluster: the
    token is found the standard way (RAY_AUTH_TOKEN_PATH here) and RAY_AUTH_MODE is not set by hand."""
    state = dict(line.split("=", 1) for line in (cluster["state"] / "c" / "cluster.env").read_text().splitlines()
                 if "=" in line)
    env = {**cluster["env"], "RAYGEN_SHARED_STORAGE": str(tmp_path)}
    assert "RAY_AUTH_MODE" not in env
    result = raygen(cluster, "run", "jobs/sample_mog.yaml", "--address", state["GCS_ADDRESS"], "--set", "n_samples=400",
                    "--set", "chunk_size=100", "--set", f"storage_path={tmp_path}", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "sample_mog" / "report.md").exists()
    assert len(list((tmp_path / "sample_mog" / "samples").glob("part-*.parquet"))) == 4


def test_down_stops_every_process_on_the_first_call(cluster):
    """Runs last in this module: it takes the shared cluster down."""
    down = subprocess.run([str(ROOT / "cluster" / "local.sh"), "down"], env=cluster["env"], timeout=120,
                          capture_output=True, text=True)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    marker = str(cluster["state"] / "c")
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            left.append(proc.info["pid"])
    assert not left, f"processes of the cluster still alive after one `down`: {left}"
