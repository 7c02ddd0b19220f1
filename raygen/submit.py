"""`raygen submit` and `raygen jobs`: run job files on a Ray cluster through the Ray Job API.

    raygen submit jobs/sample_mog.yaml --address http://HEAD:8265 [--set k=v ...] [--no-wait]
    raygen jobs list|status|logs|stop [ID] --address http://HEAD:8265

`submit` validates the job file here first (a typo fails in a second, not after an upload), uploads
the current directory as the job's working_dir and runs `raygen run JOB.yaml --set ...` on the
cluster. The job file's optional `cluster:` section supplies the runtime_env, entrypoint
resources and metadata. The address defaults to $RAY_API_SERVER_ADDRESS (what `ray job` reads).
Ray is imported inside the commands so that `raygen --help` stays fast.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import secrets
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import click

from raygen.auth import HOW_TO_GET, Token, find_token
from raygen.errors import UserError
from raygen.storage import HOW_TO_PASS_CREDENTIALS, check_no_credentials

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
SHARED_STORAGE_ENV = "RAYGEN_SHARED_STORAGE"
# Kept out of the uploaded working_dir: environments, outputs, history, benchmark results, and the
# usual homes of credentials (an upload lands in the cluster's package store, readable by its jobs).
CREDENTIAL_EXCLUDES = [".env", ".env.*", "*.env", ".aws", ".ssh", ".gnupg", ".kube", ".docker", ".netrc", ".pgpass",
                       ".git-credentials", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "id_rsa*",
                       "id_dsa*", "id_ecdsa*", "id_ed25519*", "auth_token", "credentials", "credentials.json"]
DEFAULT_EXCLUDES = [".venv", "venv", "runs", ".git", "benchmarks/results", "__pycache__", "*.pyc", ".pytest_cache",
                    *CREDENTIAL_EXCLUDES]
# What a credential file holds, for the ones the excludes do not name (`deploy/gcp.json`, `keys.txt`).
CREDENTIAL_CONTENT = re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"
                                rb"|(?i:aws_secret_access_key)[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9/+]{40}")
_SNIFF_BYTES = 64 * 1024
# Environment variables that carry credentials: they would be stored in the cluster's job table.
SECRET_ENV_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY", re.IGNORECASE)
CLUSTER_KEYS = {
    "runtime_env", "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory", "entrypoint_resources",
    "metadata",
}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Ray's own INFO lines inside a job's log (e.g. "...\tINFO job_manager.py:581 -- Runtime env is setting
# up."); raygen's lines never have this shape, and warnings/errors are kept.
RAY_INFO_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+INFO \S+\.py:\d+ -- ")

address_option = click.option(
    "--address", envvar=ADDRESS_ENV, default=None, metavar="http://HEAD:8265",
    help=f"The cluster's job API (the dashboard address). Default: ${ADDRESS_ENV}.",
)


# ---------------------------------------------------------------- storage


def _is_remote_uri(path: str) -> bool:
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.lower() not in ("", "file", "local")


def _declared_shared() -> list[str]:
    return [p for p in os.environ.get(SHARED_STORAGE_ENV, "").split(os.pathsep) if p]


def check_shared_storage(storage_path: str, num_nodes: int) -> None:
    """Refuse a node-local storage_path for a run on more than one node.

    Shared means an object-store URI (s3://, gs://, any non-file pyarrow scheme) or an absolute
    path under a prefix the user declares shared (an NFS mount) in $RAYGEN_SHARED_STORAGE
    (os.pathsep-separated). A relative path is never shared: each node resolves it on its own disk.
    """
    if num_nodes <= 1 or _is_remote_uri(storage_path):
        return
    path = storage_path[len("file://"):] if storage_path.startswith("file://") else storage_path
    if os.path.isabs(path):
        norm = os.path.normpath(path)
        for prefix in _declared_shared():
            prefix = os.path.normpath(prefix)
            if norm == prefix or norm.startswith(prefix.rstrip(os.sep) + os.sep):
                return
    raise UserError(
        f"storage_path {storage_path!r} is node-local but this cluster has {num_nodes} nodes, so checkpoints and "
        "outputs would be split across machines; set storage_path to a bucket (--set storage_path=s3://BUCKET/runs "
        f"or gs://...) or to an NFS path that every node mounts, declared with {SHARED_STORAGE_ENV}=/that/mount"
    )


# The Job API refuses larger packages (Ray's GCS package limit), after zipping them all.
WORKING_DIR_LIMIT = 500 * 1024**2


def check_working_dir(root: Path, excludes: list[str], limit: int = WORKING_DIR_LIMIT) -> None:
    """Refuse a working dir that Ray would zip for minutes (or into itself) before refusing it.

    A directory holding the system temp dir grows while Ray zips it there; one holding the home
    directory sends everything the user owns. Otherwise the size, counted with the excludes,
    must stay under the Job API's limit.
    """
    root = root.resolve()
    for name, inside in (("the system temp dir", Path(tempfile.gettempdir())), ("your home directory", Path.home())):
        inside = inside.resolve()
        if inside == root or root in inside.parents:
            raise UserError(f"refusing to upload {root}: it contains {name} ({inside}); run raygen submit from "
                            "the project directory")
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not _excluded(rel / d, excludes)]
        for name in filenames:
            if not _excluded(rel / name, excludes):
                with contextlib.suppress(OSError):
                    total += (Path(dirpath) / name).lstat().st_size
                _refuse_credential_file(root, rel / name)
        if total > limit:
            raise UserError(f"the working dir {root} holds over {limit // 1024**2} MiB outside the excludes, more "
                            "than the Job API accepts; add large data to cluster.runtime_env.excludes in the job "
                            "file, or read it from shared storage")


def _refuse_credential_file(root: Path, rel: Path) -> None:
    path = root / rel
    if path.is_symlink() or not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return
    if CREDENTIAL_CONTENT.search(head):
        raise UserError(f"refusing to upload {rel.as_posix()}: it holds credentials (a private key or secret key); "
                        f"move it out of {root} or add it to cluster.runtime_env.excludes in the job file, and give "
                        "the cluster its own identity (an IAM role / service account)")


def _excluded(rel: Path, excludes: list[str]) -> bool:
    """gitignore-style, as Ray applies `excludes`: a pattern matches a path or any of its names."""
    text = rel.as_posix()
    return any(fnmatch.fnmatch(text, p.strip("/")) or any(fnmatch.fnmatch(part, p) for part in rel.parts)
               for p in excludes)


def check_submit_storage(storage_path: str) -> None:
    """A relative storage_path would resolve inside the job's temporary working_dir on the cluster."""
    path = storage_path[len("file://"):] if storage_path.startswith("file://") else storage_path
    if not _is_remote_uri(storage_path) and not os.path.isabs(path):
        raise UserError(
            f"storage_path {storage_path!r} is relative; on a cluster it would land in the job's temporary "
            "working dir and be lost: pass an absolute path that the cluster can write "
            "(--set storage_path=/shared/runs) or a bucket (--set storage_path=s3://BUCKET/runs)"
        )


# ---------------------------------------------------------------- the job API client


def normalize_address(address: str | None) -> str:
    if not address:
        raise UserError(f"no cluster address: pass --address http://HEAD:8265 or set {ADDRESS_ENV}")
    if address.startswith("ray://") or address == "auto":
        raise UserError(
            f"--address {address!r} is a Ray client/GCS address; raygen submit talks to the job API on the "
            "dashboard port: use --address http://HEAD:8265"
        )
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


class JobAPI:
    """A JobSubmissionClient with the token attached and every failure turned into one clear line."""

    def __init__(self, address: str | None):
        self.address = normalize_address(address)
        self.token: Token | None = find_token()
        with self.errors():
            from ray.job_submission import JobSubmissionClient

            # Importing ray configures its loggers; the SDK then logs every upload step (its modules set
            # their own INFO level, so the parent's level alone does not quiet them). raygen prints what
            # matters and reports failures itself.
            for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
                logging.getLogger(name).setLevel(logging.ERROR)

            headers = self.token.headers() if self.token else None
            self.client = JobSubmissionClient(self.address, headers=headers)

    @contextlib.contextmanager
    def errors(self, job_id: str | None = None) -> Iterator[None]:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError:
            if self.token is None:
                raise UserError(
                    f"the Ray cluster at {self.address} requires an auth token and none was found; {HOW_TO_GET}"
                ) from None
            raise UserError(
                f"the Ray cluster at {self.address} rejected the auth token from {self.token.source}; "
                f"it is not this cluster's token: {HOW_TO_GET}"
            ) from None
        except (ConnectionError, requests.exceptions.RequestException) as exc:
            raise UserError(
                f"cannot reach the Ray job API at {self.address} ({type(exc).__name__}); check --address (the "
                "dashboard port, 8265 by default) and that the cluster is up (`cluster/local.sh status`)"
            ) from None
        except RuntimeError as exc:
            # The SDK reports every non-2xx answer (an unknown job id, a rejected runtime_env) this way.
            text = " ".join(str(exc).split())
            if job_id is not None and "status code 404" in text:
                raise UserError(
                    f"no job {job_id!r} on the cluster at {self.address}; list jobs with `raygen jobs list`"
                ) from None
            raise UserError(f"the Ray job API at {self.address} refused the request: {text}") from None

    def num_alive_nodes(self) -> int:
        """Alive nodes, from the dashboard's state API (the job SDK has no call for it)."""
        import requests

        with self.errors():
            response = requests.get(f"{self.address}/api/v0/nodes", params={"limit": 10000},
                                    headers=self.token.headers() if self.token else None, timeout=60)
        if response.status_code != 200:
            raise UserError(
                f"the Ray job API at {self.address} did not list the cluster's nodes (HTTP {response.status_code}); "
                "is it a Ray >= 2.9 dashboard?"
            )
        nodes = response.json()["data"]["result"]["result"]
        return sum(1 for node in nodes if node.get("state") == "ALIVE")

    def status(self, job_id: str):
        with self.errors(job_id):
            return self.client.get_job_info(job_id)

    def follow(self, job_id: str) -> None:
        """Print the job's logs as they come until it ends."""
        import asyncio

        import aiohttp

        self.status(job_id)  # an unknown id fails here, as one line, not inside the websocket

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                kept = "".join(line for line in chunk.splitlines(keepends=True) if not RAY_INFO_LINE.match(line))
                if kept:
                    click.echo(kept, nl=False)

        try:
            asyncio.run(tail())
        except (RuntimeError, aiohttp.ClientError):
            # The log stream can drop (head restart, proxy timeout); the job may still be running.
            click.echo("(log stream interrupted; waiting for the job to finish)", err=True)
        while _status_name(self.status(job_id)) not in TERMINAL:
            time.sleep(1.0)


def _status_name(info) -> str:
    return getattr(info.status, "value", str(info.status))


def _hints(job_id: str, address: str) -> str:
    flag = f"--address {address}" if os.environ.get(ADDRESS_ENV, "").rstrip("/") != address else ""
    suffix = f" {flag}" if flag else ""
    return (
        f"  follow: raygen jobs logs {job_id} --follow{suffix}\n"
        f"  status: raygen jobs status {job_id}{suffix}\n"
        f"  stop:   raygen jobs stop {job_id}{suffix}"
    )


def _exit_with_status(api: JobAPI, job_id: str) -> None:
    info = api.status(job_id)
    status = _status_name(info)
    if status == "SUCCEEDED":
        click.echo(f"job {job_id} SUCCEEDED")
        return
    # Ray appends the tail of the logs, which were just followed: keep only its first clause.
    message = " ".join((info.message or "").split()).split(", last available logs")[0]
    click.echo(f"job {job_id} {status}" + (f": {message}" if message else ""), err=True)
    sys.exit(1)


# ---------------------------------------------------------------- submit


def build_submission(job, job_file: str, overrides: tuple[str, ...], root: Path) -> dict[str, Any]:
    """The JobSubmissionClient.submit_job arguments for a loaded job (pure: no cluster needed)."""
    cluster = dict(job.cluster)
    unknown = sorted(set(cluster) - CLUSTER_KEYS)
    if unknown:
        raise UserError(
            f"{job_file}: unknown key 'cluster.{unknown[0]}'; valid keys: {', '.join(sorted(CLUSTER_KEYS))}"
        )
    for key, kind in (("runtime_env", dict), ("entrypoint_resources", dict), ("metadata", dict),
                      ("entrypoint_num_cpus", (int, float)), ("entrypoint_num_gpus", (int, float)),
                      ("entrypoint_memory", int)):
        value = cluster.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            expected = "a mapping" if kind is dict else "a number"
            raise UserError(f"{job_file}: cluster.{key} must be {expected}, got {value!r}")
    runtime_env = dict(cluster.pop("runtime_env", None) or {})
    env_vars = runtime_env.get("env_vars") or {}
    secret = sorted(k for k in (env_vars if isinstance(env_vars, dict) else {}) if SECRET_ENV_NAME.search(str(k)))
    if secret:
        raise UserError(f"{job_file}: cluster.runtime_env.env_vars sets {secret[0]}, a credential: the job table "
                        f"stores it for anyone who can list jobs; remove it and {HOW_TO_PASS_CREDENTIALS}")
    if "working_dir" in runtime_env:
        raise UserError(
            f"{job_file}: cluster.runtime_env.working_dir is set by raygen submit (the directory you submit "
            "from); remove it"
        )
    job_path = Path(job_file).resolve()
    try:
        relative = job_path.relative_to(root)
    except ValueError:
        raise UserError(
            f"job file {job_file} is outside {root}, the directory that is uploaded; "
            "run raygen submit from the project directory that contains it"
        ) from None
    runtime_env["working_dir"] = str(root)
    runtime_env["excludes"] = DEFAULT_EXCLUDES + list(runtime_env.get("excludes") or [])
    check_working_dir(root, runtime_env["excludes"])
    if os.environ.get(SHARED_STORAGE_ENV):
        # The declaration travels with the job, so `raygen run` on the cluster accepts the same path.
        runtime_env["env_vars"] = {SHARED_STORAGE_ENV: os.environ[SHARED_STORAGE_ENV],
                                   **(runtime_env.get("env_vars") or {})}
    entrypoint = shlex.join(["raygen", "run", relative.as_posix(), *(a for o in overrides for a in ("--set", o))])
    metadata = {str(k): str(v) for k, v in (cluster.pop("metadata", None) or {}).items()}
    metadata.setdefault("raygen_job", relative.as_posix())
    metadata.setdefault("raygen_workload", job.workload)
    metadata.setdefault("raygen_run_name", job.config.name)
    submission_id = f"raygen-{job.config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    submission = dict(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                      submission_id=submission_id, **cluster)
    # Last guard: nothing the job table will show may carry a credential in a URI.
    check_no_credentials(json.dumps(submission, default=str), f"the job for {job_file}")
    return submission


@click.command()
@click.argument("job_file", metavar="JOB.yaml")
@address_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--no-wait", is_flag=True, help="Print the job id and return instead of following the logs.")
def submit(job_file: str, address: str | None, overrides: tuple[str, ...], no_wait: bool) -> None:
    """Submit a job file to a Ray cluster and follow it (exit 0 only if the job succeeds)."""
    from raygen.jobs import load_job

    job = load_job(job_file, overrides)  # bad keys fail here, before anything is uploaded
    check_submit_storage(job.config.storage_path)
    submission = build_submission(job, job_file, overrides, Path.cwd().resolve())
    api = JobAPI(address)
    check_shared_storage(job.config.storage_path, api.num_alive_nodes())
    with api.errors():
        job_id = api.client.submit_job(**submission)
    click.echo(f"submitted {job.workload} job {job_id} to {api.address} (run dir {job.config.run_dir})")
    click.echo(_hints(job_id, api.address))
    if no_wait:
        return
    try:
        api.follow(job_id)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {job_id} keeps running (`raygen jobs stop {job_id}` stops it)",
                   err=True)
        sys.exit(130)
    _exit_with_status(api, job_id)


# ---------------------------------------------------------------- jobs


@click.group()
def jobs() -> None:
    """List, inspect, follow and stop jobs on a Ray cluster."""


@jobs.command(name="list")
@address_option
def list_jobs(address: str | None) -> None:
    """List the cluster's jobs, newest first."""
    api = JobAPI(address)
    with api.errors():
        infos = api.client.list_jobs()
    if not infos:
        click.echo(f"no jobs on {api.address}")
        return
    infos.sort(key=lambda i: i.start_time or 0, reverse=True)
    for info in infos:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000)) if info.start_time else "-"
        job_id = info.submission_id or info.job_id
        click.echo(f"{job_id:<45} {_status_name(info):<10} {started}  {info.entrypoint}")


@jobs.command()
@click.argument("job_id")
@address_option
def status(job_id: str, address: str | None) -> None:
    """Show a job's status (exit 0 if it succeeded or is still running/pending, 1 if it failed or stopped)."""
    api = JobAPI(address)
    info = api.status(job_id)
    name = _status_name(info)
    message = " ".join((info.message or "").split())
    click.echo(f"{job_id} {name}" + (f": {message}" if message else ""))
    if name in ("FAILED", "STOPPED"):
        sys.exit(1)


@jobs.command()
@click.argument("job_id")
@address_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the job ends.")
def logs(job_id: str, address: str | None, follow: bool) -> None:
    """Print a job's output."""
    api = JobAPI(address)
    if follow:
        api.follow(job_id)
        return
    with api.errors(job_id):
        click.echo(api.client.get_job_logs(job_id), nl=False)


@jobs.command()
@click.argument("job_id")
@address_option
def stop(job_id: str, address: str | None) -> None:
    """Stop a running job and wait until it has stopped."""
    api = JobAPI(address)
    with api.errors(job_id):
        running = api.client.stop_job(job_id)
    if not running:
        click.echo(f"job {job_id} is not running ({_status_name(api.status(job_id))})")
        return
    # Ray stops the entrypoint asynchronously (SIGTERM, then SIGKILL after a grace period).
    while (name := _status_name(api.status(job_id))) not in TERMINAL:
        time.sleep(0.5)
    click.echo(f"job {job_id} {name}")
