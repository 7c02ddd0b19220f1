"""raygen.storage: local paths and URIs, atomic writes, complete directories, clear errors."""

import os
import time

import pytest

from raygen import storage
from raygen.errors import UserError
from tests.helpers import free_port


def test_join_keeps_the_query_last_and_paths_plain():
    assert storage.join("s3://b/runs?endpoint_override=h:1&scheme=http", "n", "x.json") == \
        "s3://b/runs/n/x.json?endpoint_override=h:1&scheme=http"
    assert storage.join("runs/", "n") == "runs/n"
    assert storage.join("/", "n") == "/n"
    assert storage.display("s3://b/runs/n?endpoint_override=h:1") == "s3://b/runs/n"
    assert not storage.is_uri("/a/b") and not storage.is_uri("file:///a") and storage.is_uri("gs://b/x")


def test_unknown_scheme_is_one_clear_line():
    with pytest.raises(UserError, match="cannot use storage location 'nope://x/y'"):
        storage.resolve("nope://x/y")


def test_local_write_is_atomic_and_directory_complete_only_when_marked(tmp_path):
    loc = storage.resolve(str(tmp_path / "run"))
    storage.write_bytes(loc.child("a/b.txt"), b"one")
    storage.write_bytes(loc.child("a/b.txt"), b"two")
    assert (tmp_path / "run/a/b.txt").read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path / "run/a")) == ["b.txt"]  # no temp files left behind
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.pt").write_bytes(b"w")
    assert not storage.is_complete(loc.child("ckpt"))
    storage.upload_dir(src, loc.child("ckpt"))
    assert storage.is_complete(loc.child("ckpt"))
    back = storage.download_dir(loc.child("ckpt"), tmp_path / "back")
    assert (back / "sub" / "w.pt").read_bytes() == b"w"


def test_bucket_round_trip(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = storage.resolve(storage.join(bucket, "r"))
    storage.check_reachable(loc)
    storage.write_bytes(loc.child("x.json"), b"{}")
    assert storage.read_bytes(loc.child("x.json")) == b"{}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "state.pt").write_bytes(b"s" * 1000)
    storage.upload_dir(src, loc.child("checkpoint_000001"))
    assert storage.is_complete(loc.child("checkpoint_000001"))
    assert storage.listdir(loc) == ["checkpoint_000001", "x.json"]
    assert (storage.download_dir(loc.child("checkpoint_000001"), tmp_path / "d") / "state.pt").read_bytes() == b"s" * 1000
    storage.delete(loc.child("checkpoint_000001"))
    assert storage.listdir(loc) == ["x.json"]
    assert not (tmp_path / "s3:").exists()


def test_unreachable_endpoint_and_missing_bucket_are_clear_lines(s3_server):
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot reach storage 's3://b/runs'"):
        storage.check_reachable(storage.resolve(f"s3://b/runs?endpoint_override=127.0.0.1:{free_port()}&scheme=http"))
    assert time.monotonic() - start < storage.REACH_TIMEOUT_S + 5
    with pytest.raises(UserError, match="bucket 'no-such-bucket' .* does not exist"):
        storage.check_reachable(storage.resolve(f"s3://no-such-bucket/runs?endpoint_override={s3_server}&scheme=http"))


def test_bucket_write_probe_leaves_nothing_behind(bucket):
    loc = storage.resolve(storage.join(bucket, "probe_run"))
    storage.check_writable(loc)
    assert storage.listdir(loc) == [] and not storage.exists(loc.child(storage.WRITE_PROBE))


def test_credentials_in_a_uri_are_refused_and_never_shown():
    for uri in ("s3://AKIAX:s3cr3t@bucket/runs", "s3://bucket/runs?secret_key=s3cr3t&access_key=AKIAX",
                "gs://bucket/runs?access_token=s3cr3t"):
        with pytest.raises(UserError, match="holds credentials .* environment variables") as caught:
            storage.resolve(uri)
        assert "s3cr3t" not in str(caught.value)
    assert storage.display("s3://user@bucket/runs?x=1") == "s3://bucket/runs"
    assert storage.find_credentials("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http") is None


def test_a_bucket_file_is_one_put_and_a_dead_endpoint_fails_after_bounded_retries(bucket, monkeypatch):
    import logging

    requests = []

    class Requests(logging.Handler):
        def emit(self, record):
            requests.append(record.getMessage())

    log = logging.getLogger("werkzeug")  # moto's server logs one line per request
    handler, level = Requests(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        storage.write_bytes(storage.resolve(storage.join(bucket, "one", "part-0000000.parquet")), b"x" * 300_000)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    calls = [r.split('"')[1].split(" HTTP")[0] for r in requests if '"' in r]
    assert len(calls) == 1 and calls[0].startswith("PUT ") and "uploads" not in calls[0], calls
    # a bucket that keeps failing: WRITE_ATTEMPTS tries with backoff, then the error (no hang)
    tries, sleeps = [], []

    class Failing:
        def open_output_stream(self, path):
            tries.append(path)
            raise OSError("AWS Error NETWORK_CONNECTION during CreateMultipartUpload operation")

    monkeypatch.setattr(storage.time, "sleep", sleeps.append)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        storage.write_bytes(storage.Location(Failing(), "b/x/part.parquet", "s3://b/x/part.parquet"), b"x")
    assert len(tries) == storage.WRITE_ATTEMPTS and sleeps == [0.5, 1.0, 2.0]
