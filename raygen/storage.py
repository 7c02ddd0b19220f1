"""Where raygen reads and writes: a local path or any URI that `pyarrow.fs` understands.

    runs                                   relative local path (resolved against the cwd)
    /shared/runs, file:///shared/runs      absolute local / NFS path
    s3://bucket/runs                       S3 (credentials the standard AWS ways)
    s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http    an S3-compatible store
    gs://bucket/runs                       Google Cloud Storage

This is the layer Ray Train and Ray Tune use for their own storage, so a run directory and the
checkpoints Ray writes into it live in the same place. A URI's query (`?endpoint_override=...`)
configures the filesystem, not the path: `join` keeps it at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from raygen.errors import UserError

# Long enough for a slow bucket, short enough that a wrong endpoint is an error, not a hang.
REACH_TIMEOUT_S = 30.0


# Credentials inside a URI: user:password before the host, or pyarrow's key query parameters.
_URI_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s@]*:[^/?#\s@]*@", re.IGNORECASE)
_URI_KEY_PARAM = re.compile(r"[?&](access_key|secret_key|session_token|access_token|password|credential[a-z_]*)=",
                            re.IGNORECASE)
HOW_TO_PASS_CREDENTIALS = (
    "pass bucket credentials the standard ways instead: environment variables (AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, or GOOGLE_APPLICATION_CREDENTIALS), a profile (AWS_PROFILE, ~/.aws/credentials, "
    "gcloud auth) or the machine's instance identity (an IAM role / service account)"
)


WRITE_ATTEMPTS = 4  # tries per bucket write (see write_bytes)


def find_credentials(text: str) -> str | None:
    """What in `text` looks like a credential written into a URI ('user:password@' or '?secret_key='), else None."""
    if _URI_USERINFO.search(text):
        return "a user:password@ part"
    match = _URI_KEY_PARAM.search(text)
    return f"a '{match.group(1)}=' parameter" if match else None


def check_no_credentials(text: str, what: str) -> None:
    """Refuse a value that carries credentials: it would be printed and written to config.json, reports
    and the cluster's job table. The message never repeats the value."""
    found = find_credentials(text)
    if found is not None:
        raise UserError(f"{what} holds credentials ({found}); never put keys in a URI, they end up in logs and "
                        f"records: {HOW_TO_PASS_CREDENTIALS}")


def is_uri(location: str) -> bool:
    """True for `scheme://...` other than file:// (a Windows drive letter is not a scheme)."""
    scheme = urlsplit(location).scheme
    return len(scheme) > 1 and scheme != "file" and "://" in location


def join(location: str, *parts: str) -> str:
    """`join("s3://b/runs?x=1", "name")` -> "s3://b/runs/name?x=1"; plain paths join as paths."""
    parts = tuple(p.strip("/") for p in parts if p)
    if not is_uri(location):
        return "/".join([location.rstrip("/"), *parts]) if parts else location
    split = urlsplit(location)
    path = "/".join([split.path.rstrip("/"), *parts])
    return urlunsplit((split.scheme, split.netloc, path, split.query, ""))


def display(location: str) -> str:
    """The location as a person should see it: absolute for local paths, query dropped for URIs."""
    if not is_uri(location):
        return str(local_path(location))
    split = urlsplit(location)
    return urlunsplit((split.scheme, split.netloc.rpartition("@")[2], split.path, "", ""))


def local_path(location: str) -> Path:
    path = location[len("file://"):] if location.startswith("file://") else location
    return Path(path).expanduser().absolute()


@dataclass(frozen=True)
class Location:
    """A resolved location: the filesystem, the path inside it and the URI it came from."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        return Location(self.fs, "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts)]),
                        join(self.uri, *parts))


def _single_put(uri: str) -> str:
    """An s3:// URI with `allow_delayed_open`: pyarrow then sends a file smaller than its part size
    (a Parquet part, a manifest) as one PUT, not a three-request multipart upload."""
    scheme, netloc, path, query, fragment = urlsplit(uri)
    if scheme != "s3" or "allow_delayed_open" in query:
        return uri
    return urlunsplit((scheme, netloc, path, "&".join(q for q in (query, "allow_delayed_open=true") if q), fragment))


def resolve(location: str) -> Location:
    """Resolve a path or URI to its filesystem; an unknown scheme is a UserError."""
    if not is_uri(location):
        path = str(local_path(location))
        return Location(pafs.LocalFileSystem(), path, path)
    check_no_credentials(location, f"storage location {display(location)!r}")
    try:
        fs, path = pafs.FileSystem.from_uri(_single_put(location))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for bad URIs
        raise UserError(f"cannot use storage location {display(location)!r}: {first_line(exc)}; use a local "
                        "path or an s3://, gs:// or other pyarrow.fs URI") from None
    return Location(fs, path.rstrip("/"), location)


def _within(timeout_s: float, where: str, probe) -> dict[str, Any]:
    """Run probe(outcome) in a thread for at most timeout_s; an exception lands in outcome['error']."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            probe(outcome)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "error" not in outcome:
        raise UserError(f"storage {where!r} did not answer within {timeout_s:.0f} s; check the endpoint "
                        "(?endpoint_override=HOST:PORT&scheme=http for an S3-compatible server) and the network")
    return outcome


def check_reachable(loc: Location, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Touch a remote location once, so that a bad endpoint, bucket or credentials is one line, not a hang."""
    if loc.is_local:
        return
    where = display(loc.uri)

    def probe(outcome: dict[str, Any]) -> None:
        bucket = loc.path.split("/", 1)[0]
        outcome["bucket_found"] = loc.fs.get_file_info(bucket).type != pafs.FileType.NotFound

    outcome = _within(timeout_s, where, probe)
    if outcome["error"] is not None:
        raise UserError(f"cannot reach storage {where!r}: {first_line(outcome['error'])}; check the bucket "
                        "name, the endpoint and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                        "GOOGLE_APPLICATION_CREDENTIALS or the node's cloud identity)")
    if not outcome["bucket_found"]:
        raise UserError(f"bucket {loc.path.split('/', 1)[0]!r} of storage {where!r} does not exist (or these "
                        "credentials cannot see it); create it first or fix the name")


WRITE_PROBE = ".raygen-write-probe"


def check_writable(loc: Location, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Checked before Ray starts. Locally: the nearest existing ancestor must be a writable directory.
    Remotely: write, read back and delete one small object: a bucket that anonymous or read-only
    credentials can list passes `check_reachable` but would fail the run's first write."""
    if not loc.is_local:
        probe_loc = loc.child(WRITE_PROBE)

        def probe(outcome: dict[str, Any]) -> None:
            write_bytes(probe_loc, b"raygen")
            if read_bytes(probe_loc) != b"raygen":
                raise OSError("the object read back differs from the one written")
            delete(probe_loc)

        outcome = _within(timeout_s, display(loc.uri), probe)
        if outcome["error"] is not None:
            raise UserError(f"cannot write to storage {display(loc.uri)!r} ({first_line(outcome['error'])}); these "
                            f"credentials may not write there (or none were found): {HOW_TO_PASS_CREDENTIALS}")
        return
    path = Path(loc.path)
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise UserError(f"cannot write under {loc.path}: {path} is a file; set storage_path to a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write under {loc.path}: {path} is not writable; set storage_path to a directory "
                        "you can write")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # pyarrow's S3 errors append curl "Details" and repeat the bucket: keep the operation and cause
    return text.splitlines()[0].split("; Details:")[0].split(": AWS Error ")[-1]


# ------------------------------------------------------------------ files


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole file atomically: readers see the old file or the new one, never a part.

    Locally: a temp name in the same directory, then a rename. On an object store a single PUT
    (`_single_put`) only becomes visible once complete, so the final name is written directly;
    a failed PUT is retried WRITE_ATTEMPTS times with exponential backoff (0.5, 1, 2 s).
    """
    parent = loc.path.rsplit("/", 1)[0]
    if loc.is_local:
        loc.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{loc.path.rsplit('/', 1)[1]}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, loc.path)
        return
    for attempt in range(WRITE_ATTEMPTS):  # object stores have no directories to create
        try:
            with loc.fs.open_output_stream(loc.path) as f:
                f.write(data)
            return
        except OSError:  # a throttled or briefly unreachable bucket (each try has the AWS SDK's own retries)
            if attempt == WRITE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * 2**attempt)


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def listdir(loc: Location) -> list[str]:
    """Names directly under loc (files and directories), sorted; [] if it does not exist."""
    info = loc.fs.get_file_info(loc.path)
    if info.type != pafs.FileType.Directory:
        return []
    entries = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    return sorted(e.base_name for e in entries)


def delete(loc: Location) -> None:
    """Remove a file or a directory tree; nothing if absent."""
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.Directory:
        loc.fs.delete_dir(loc.path)
    elif info.type == pafs.FileType.File:
        loc.fs.delete_file(loc.path)


COMPLETE = ".complete"


def upload_dir(local_dir: str | Path, loc: Location) -> None:
    """Copy a local directory to loc so that it counts as complete only once all of it is there.

    The marker file `.complete` is written last; readers (`is_complete`) trust only marked
    directories, so a copy interrupted half-way is never used.
    """
    local_dir = Path(local_dir)
    if loc.is_local:  # copied beside it, marked, then renamed into place
        tmp = Path(f"{loc.path}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local_dir, tmp, ignore=shutil.ignore_patterns(COMPLETE))
        (tmp / COMPLETE).write_text("")
        shutil.rmtree(loc.path, ignore_errors=True)
        os.replace(tmp, loc.path)
        return
    delete(loc)
    loc.fs.create_dir(loc.path, recursive=True)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != COMPLETE)
    for path in files:
        write_bytes(loc.child(str(path.relative_to(local_dir))), path.read_bytes())
    write_bytes(loc.child(COMPLETE), b"")


def is_complete(loc: Location) -> bool:
    return exists(loc.child(COMPLETE))


def download_dir(loc: Location, local_dir: str | Path) -> Path:
    """Copy a directory tree from loc into local_dir (created); returns local_dir."""
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    selector = pafs.FileSelector(loc.path, recursive=True)
    for info in loc.fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        target = local_dir / info.path[len(loc.path):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with loc.fs.open_input_stream(info.path) as f:
            target.write_bytes(f.read())
    return local_dir


def local_dir_for(location: str) -> Path:
    """A local directory holding the files at `location`: itself if local, else a downloaded copy.

    For inputs such as `model=s3://bucket/runs/train/checkpoint_000100`: library loaders want a
    directory on disk. Remote copies go to a per-process temp dir that the OS cleans up.
    """
    loc = resolve(location)
    if loc.is_local:
        return Path(loc.path)
    check_reachable(loc)
    if not exists(loc):
        raise UserError(f"{display(location)!r} does not exist")
    return download_dir(loc, tempfile.mkdtemp(prefix="raygen-input-"))
