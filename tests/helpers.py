"""Helpers shared by several test modules (test modules never import each other)."""

import os
import signal
import socket
import threading
import time

import pytest

# The main job at minimal sizes: finishes in about a minute on 2 cores.
QUICKSTART_TINY = ["train_steps=20", "sadm_warmup=5", "n_samples=100", "levels=2", "steps_per_level=1",
                   "chunk_size=50", "ratios=[0, 0.1]", "seeds=[0]", "epochs=2", "feature_steps=20"]

# The zoo classifier of the hand-written zoo parts (`write_zoo_part`).
ZOO_ARCH = dict(in_channels=1, num_classes=10, width=4, feature_dim=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_cluster():
    """Ray on 2 simulated nodes of 1 CPU each (head without CPUs): one worker/actor fits per node."""
    import ray
    from ray.cluster_utils import Cluster

    from raygen import runtime

    runtime.shutdown()  # also forgets an embedded Ray of an earlier test: this one is a cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def ray_actors(class_name: str, state=None):
    """This Ray cluster's actors whose class name contains `class_name` (Ray Train's are
    "RayTrainWorker", Ray Data's "MapWorker(MapBatches(<class>))"), from the GCS actor table: the
    state API needs a dashboard, which can fail to start when other Ray instances hold its port on
    the same machine, and process titles would match other people's Ray instances too."""
    import ray._private.state

    actors = ray._private.state.actors().values()
    return [a for a in actors if class_name in a["ActorClassName"] and state in (None, a["State"])]


def task_workers(task_name: str):
    """Pids of this Ray instance's worker processes now running a task whose name contains `task_name`
    (a task is titled by its function, e.g. "ray::write_chunk"): children of this
    session's raylet, found by process title, so other Ray instances on the machine are not touched."""
    import psutil
    import ray._private.worker
    from ray._private import ray_constants

    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    found = []
    for child in psutil.Process(raylet).children():
        try:
            if task_name in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return found


def kill_mid_run(target, progress, at_least, victim, *, wait_s=120, join_s=300):
    """Run `target()` on a thread; once `progress()` >= `at_least` and a victim process exists, SIGKILL it
    (a real process death, mid-run) and wait for the run to finish. `victim` is an actor class name
    (`ray_actors`) or a function returning candidate pids (e.g. `lambda: task_workers("write_chunk")`).
    Returns (target's result, the killed pid, progress() right after the kill)."""
    import psutil

    out: dict = {}

    def work():
        try:
            out["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            out["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    deadline, killed = time.time() + wait_s, None
    while killed is None and thread.is_alive() and time.time() < deadline:
        found = [] if progress() < at_least else (
            [a["Pid"] for a in ray_actors(victim, "ALIVE")] if isinstance(victim, str) else victim())
        if found:
            killed = found[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    at_kill = progress()
    thread.join(timeout=join_s)
    if "error" in out:
        raise out["error"]
    assert killed is not None, "no process found to kill while the run was going"
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert not thread.is_alive(), "the run did not finish after the kill"
    return out["result"], killed, at_kill


def write_zoo_part(store, chunk, chunks, arch, layout_names=None):
    """A weightgen zoo part of random parameters (seeded by the chunk) for the classifier `arch`."""
    import numpy as np

    from raygen.models.params import ParamLayout
    from raygen.weightgen.store import params_table
    from raygen.weightgen.zoo import build_classifier

    net = build_classifier(arch)
    layout = ParamLayout.of(net, layout_names)
    ids = chunks.ids(chunk)
    params = np.random.default_rng(chunk).normal(size=(len(ids), layout.numel)).astype(np.float32)
    cols = {"model_id": ids.tolist(), "task_id": [0] * len(ids), "seed": [0] * len(ids), "step": [1] * len(ids),
            "params": [params], "val_acc": [0.5] * len(ids),
            "test_acc": [0.5] * len(ids)}
    meta = {"arch": arch, "layout": layout.to_dict(), "base": None, "tasks": {"0": {"family": "digits"}}}
    store.write(chunk, params_table(cols), chunks, meta)


def bucket_objects(uri: str) -> list[str]:
    """The files under a run directory URI (a bucket or a local path), relative to it, through pyarrow."""
    from pyarrow import fs as pafs

    from raygen import storage

    loc = storage.resolve(uri)
    return sorted(i.path[len(loc.path) + 1:] for i in loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
                  if i.type == pafs.FileType.File)
