"""Every workload's run directory in a bucket (a real S3 API: moto server on 127.0.0.1).

The objects are read back through pyarrow; nothing may appear locally under a directory named
after the scheme.
"""

import json

import pytest

from raygen import storage
from raygen.errors import UserError
from raygen.jobs import load_job
from tests.helpers import QUICKSTART_TINY


def _objects(uri: str) -> list[str]:
    loc = storage.resolve(uri)
    from pyarrow import fs as pafs

    return sorted(i.path[len(loc.path) + 1:] for i in loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
                  if i.type == pafs.FileType.File)


def _report(uri: str) -> dict:
    return json.loads(storage.read_bytes(storage.resolve(storage.join(uri, "report.json"))))


def test_quickstart_in_a_bucket_then_reused_and_refused(bucket, tmp_path, monkeypatch, ray_local):
    from raygen.workloads import quickstart

    monkeypatch.chdir(tmp_path)
    job = load_job(_jobs("quickstart.yaml"),
                   QUICKSTART_TINY + [f"storage_path={bucket}", "name=qs"])
    first = quickstart.run(job.config)
    run = storage.join(bucket, "qs")
    objects = _objects(run)
    for expected in ("config.json", "report.md", "report.json", "train/report.json", "sample/report.json",
                     "sample/preview.png", "study/report.json", "study/accuracy_vs_ratio.png", "study/trials.json"):
        assert expected in objects, expected
    assert sum(o.startswith("sample/samples/part-") for o in objects) == 2
    assert any(o.startswith("train/checkpoint_") for o in objects)
    assert any(o.startswith("study/mixes/mix=") for o in objects)
    assert _report(run)["table"] == first["table"]

    second = quickstart.run(job.config)  # every stage reused from the bucket
    assert second["stages"]["train"]["reused"] and second["stages"]["sample"]["parts_reused"] == 2
    changed = load_job(_jobs("quickstart.yaml"), QUICKSTART_TINY + [f"storage_path={bucket}", "name=qs", "epochs=3"])
    with pytest.raises(UserError, match="epochs: 2 -> 3"):
        quickstart.run(changed.config)
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())


def test_tune_in_a_bucket(bucket, tmp_path, monkeypatch, ray_local):
    from raygen.workloads import tune

    monkeypatch.chdir(tmp_path)
    job = load_job(_jobs("tune_hypergrad.yaml"), [f"storage_path={bucket}", "name=t", "num_samples=1",
                                                  "solvers=[nystrom]", "max_outer_steps=2", "grace_period=1",
                                                  "baselines=[random]", "baseline_samples=1"])
    tune.run(job.config)
    run = storage.join(bucket, "t")
    objects = _objects(run)
    assert "report.json" in objects and "trials.json" in objects
    assert any(o.endswith("result.json") for o in objects), "Tune's experiment lives in the bucket"
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())


def _jobs(name: str) -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / "jobs" / name)
