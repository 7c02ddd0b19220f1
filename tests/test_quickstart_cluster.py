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
        summary = quickstart.run(job.config)
        report = json.loads((tmp_path / "qs2" / "report.json").read_text())
        assert report["table"] == summary["table"] and len(summary["table"]) == 4
        assert (tmp_path / "qs2" / "study" / "accuracy_vs_ratio.png").exists()
        assert len(list((tmp_path / "qs2" / "sample" / "samples").glob("part-*.parquet"))) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
