"""The tiny main job on a simulated 2-node cluster (ray.cluster_utils.Cluster), storage in a shared tmp dir."""

import json

import pytest

from raygen.jobs import load_job
from tests.helpers import QUICKSTART_TINY as TINY

pytestmark = pytest.mark.ray


def test_tiny_quickstart_on_two_nodes(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from raygen import runtime
    from raygen.workloads import quickstart

    runtime.shutdown()  # a fresh cluster, not the shared local Ray of other tests
    # one CPU per node: the two sampling actors and the two concurrent study trials need both nodes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        assert runtime.num_nodes() == 2
        job = load_job("jobs/quickstart.yaml", TINY + [f"storage_path={tmp_path}", "name=qs2"])
        first = quickstart.run(job.config)
        run_dir = tmp_path / "qs2"
        report = json.loads((run_dir / "report.json").read_text())
        assert report["table"] == first["table"]
        assert (run_dir / "study" / "accuracy_vs_ratio.png").stat().st_size > 0
        assert (run_dir / "study" / "samples.png").stat().st_size > 0
        assert "study/accuracy_vs_ratio.png" in (run_dir / "report.md").read_text()
        assert len(list((run_dir / "sample" / "samples").glob("part-*.parquet"))) == 2
        assert not first["stages"]["train"]["reused"] and first["stages"]["sample"]["parts_reused"] == 0
        table = first["table"]
        assert {(r["ratio"], r["arm"]) for r in table} == {(0.0, "generated"), (0.0, "control"),
                                                           (0.1, "generated"), (0.1, "control")}
        assert all(0 <= r["clean_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 for r in table)
        # ratio 0: both arms train on the same rows with the same seed -> identical models
        r0 = {r["arm"]: r for r in table if r["ratio"] == 0.0}
        assert r0["generated"]["clean_acc"] == r0["control"]["clean_acc"]
        trials = json.loads((run_dir / "study" / "trials.json").read_text())
        share = {(t["ratio"], t["arm"]): t["replaced_share"] for t in trials}
        assert share[(0.0, "generated")] == 0 and 0.09 < share[(0.1, "generated")] < 0.11
        # a re-run's reuse of every stage, and the refusal of other settings: tests/test_workloads_bucket.py
    finally:
        ray.shutdown()
        cluster.shutdown()
