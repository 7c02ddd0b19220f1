"""The tiny main job on a simulated 2-node cluster (ray.cluster_utils.Cluster) with its run directory in
a bucket (a real S3 API: moto server on 127.0.0.1), as a real multi-node cluster keeps it; then a re-run
that reuses every stage, and the refusal of other settings."""

import json
from pathlib import Path

import pytest

from raygen import storage
from raygen.errors import UserError
from raygen.jobs import load_job
from tests.helpers import QUICKSTART_TINY as TINY
from tests.helpers import bucket_objects as _objects

pytestmark = pytest.mark.ray
JOB = str(Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml")


def _read(uri: str, name: str) -> bytes:
    return storage.read_bytes(storage.resolve(storage.join(uri, name)))


def test_tiny_quickstart_on_two_nodes_in_a_bucket_then_reused_and_refused(bucket, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from raygen import runtime
    from raygen.workloads import quickstart

    monkeypatch.chdir(tmp_path)
    runtime.shutdown()  # a fresh cluster, not the shared local Ray of other tests
    # one CPU per node: the two sampling actors and the two concurrent study trials need both nodes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        assert runtime.num_nodes() == 2
        job = load_job(JOB, TINY + [f"storage_path={bucket}", "name=qs"])
        first = quickstart.run(job.config)
        run = storage.join(bucket, "qs")
        objects = _objects(run)
        for expected in ("config.json", "report.md", "report.json", "train/report.json", "sample/report.json",
                         "sample/preview.png", "study/report.json", "study/accuracy_vs_ratio.png",
                         "study/samples.png", "study/trials.json"):
            assert expected in objects, expected
        assert sum(o.startswith("sample/samples/part-") for o in objects) == 2
        assert any(o.startswith("train/checkpoint_") for o in objects)
        assert any(o.startswith("study/mixes/mix=") for o in objects)
        assert json.loads(_read(run, "report.json"))["table"] == first["table"]
        assert len(_read(run, "study/accuracy_vs_ratio.png")) > 0
        assert "study/accuracy_vs_ratio.png" in _read(run, "report.md").decode()
        assert not first["stages"]["train"]["reused"] and first["stages"]["sample"]["parts_reused"] == 0
        table = first["table"]
        assert {(r["ratio"], r["arm"]) for r in table} == {(0.0, "generated"), (0.0, "control"),
                                                           (0.1, "generated"), (0.1, "control")}
        assert all(0 <= r["clean_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 for r in table)
        # ratio 0: both arms train on the same rows with the same seed -> identical models
        r0 = {r["arm"]: r for r in table if r["ratio"] == 0.0}
        assert r0["generated"]["clean_acc"] == r0["control"]["clean_acc"]
        share = {(t["ratio"], t["arm"]): t["replaced_share"] for t in json.loads(_read(run, "study/trials.json"))}
        assert share[(0.0, "generated")] == 0 and 0.09 < share[(0.1, "generated")] < 0.11

        second = quickstart.run(job.config)  # every stage reused from the bucket: the same checkpoint and table
        assert second["stages"]["train"]["reused"]
        assert second["stages"]["train"]["checkpoint"] == first["stages"]["train"]["checkpoint"]
        assert second["stages"]["sample"]["parts_reused"] == second["stages"]["sample"]["parts"] == 2
        assert second["table"] == first["table"]
        changed = load_job(JOB, TINY + [f"storage_path={bucket}", "name=qs", "epochs=3"])
        with pytest.raises(UserError, match="epochs: 2 -> 3"):
            quickstart.run(changed.config)
        assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())
    finally:
        ray.shutdown()
        cluster.shutdown()
