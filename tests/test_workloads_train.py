"""`raygen.workloads.train` on Ray Train: 2 workers on 2 simulated nodes, recovery from a killed worker,
plain and Ray Train runs resuming from each other in a bucket, bad data and unplaceable workers as one line."""

import json
import time

import pytest

from raygen.workloads.train import CONFIG, run
from tests import helpers
from tests.helpers import kill_mid_run, ray_actors

pytestmark = pytest.mark.ray
two_node_cluster = helpers.two_node_cluster


def _config(tmp_path, name, **kw):
    base = dict(name=name, storage_path=str(tmp_path), batch_size=16, num_workers=2, log_every=1,
                sample_every=0, sadm_warmup=0, max_failures=1)
    return CONFIG.from_dict({**base, **kw})


def test_killed_worker_of_two_on_two_nodes_resumes_from_last_checkpoint(two_node_cluster, tmp_path):
    config = _config(tmp_path, "fault", steps=20, checkpoint_every=4)

    def checkpoints():
        return len(list((tmp_path / "fault").glob("checkpoint_*/.complete")))

    summary, _, _ = kill_mid_run(lambda: run(config), checkpoints, 1, "RayTrainWorker")
    assert 0 < summary["resumed_from"] < 20  # resumed from a checkpoint, not step 0
    lines = [json.loads(l) for l in (tmp_path / "fault" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 21))  # the curve continues without gaps or repeats
    ckpt = tmp_path / "fault" / "checkpoint_000020"
    assert summary["checkpoint"].endswith("checkpoint_000020") and ckpt.is_dir()
    # both ranks contributed to the merged checkpoint, from different nodes
    assert (ckpt / "rng_rank0.pt").exists() and (ckpt / "rng_rank1.pt").exists()
    assert len({a["Address"]["NodeID"] for a in ray_actors("RayTrainWorker")}) == 2
    assert (tmp_path / "fault" / "report.md").exists()


@pytest.fixture
def embedded_ray():
    """raygen's own local Ray (2 CPUs, no GPU), where a request no node can meet is an error, not a wait."""
    import ray

    from raygen import runtime

    if ray.is_initialized() and not runtime._embedded:  # the two-node cluster above: a plain driver
        ray.shutdown()
    runtime.init(num_cpus=2)
    yield ray


def test_plain_and_ray_train_runs_resume_from_each_other_in_a_bucket(embedded_ray, bucket):
    from raygen import storage
    from raygen.models import load_denoiser

    base = dict(name="mixed", storage_path=bucket, batch_size=8, log_every=1, sample_every=0, sadm_warmup=0,
                checkpoint_every=2)
    assert run(CONFIG.from_dict(dict(base, steps=2, num_workers=1)))["resumed_from"] is None
    assert run(CONFIG.from_dict(dict(base, steps=4, num_workers=0)))["resumed_from"] == 2
    summary = run(CONFIG.from_dict(dict(base, steps=6, num_workers=1)))
    run_uri = storage.join(bucket, "mixed")
    assert summary["resumed_from"] == 4 and summary["checkpoint"] == storage.join(run_uri, "checkpoint_000006")
    assert summary["final"]["loss"] > 0  # rank 0's last metrics come back to the driver
    assert summary["device"] == "cpu"  # no use_gpu
    assert load_denoiser(storage.local_dir_for(summary["checkpoint"])).sample_shape == (1, 8, 8)
    lines = storage.read_bytes(storage.resolve(storage.join(run_uri, "metrics.jsonl"))).decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    kept = sorted(n for n in storage.listdir(storage.resolve(run_uri)) if n.startswith("checkpoint_"))
    assert kept == ["checkpoint_000004", "checkpoint_000006"]  # keep_checkpoints=2, Ray Train runs included
    assert all(storage.is_complete(storage.resolve(storage.join(run_uri, name))) for name in kept)


def test_corrupt_image_on_ray_train_is_one_line_naming_the_file(embedded_ray, tmp_path):
    import numpy as np
    from PIL import Image

    from raygen.errors import UserError

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "images" / c / f"{i}.png")
    bad = tmp_path / "images" / "b" / "broken.png"
    bad.write_bytes(b"not an image")
    config = CONFIG.from_dict(dict(name="bad", storage_path=str(tmp_path / "runs"), data=str(tmp_path / "images"),
                                   num_classes=2, batch_size=4, steps=3, sample_every=0, num_workers=1))
    with pytest.raises(UserError, match=rf"corrupt or unreadable image {bad}") as info:
        run(config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, phrase", [
    (dict(num_workers=1, use_gpu=True), "use_gpu asks for CPU 1, GPU 1"),
    (dict(num_workers=3), "num_workers asks for CPU 3"),
])
def test_workers_that_cannot_be_placed_are_refused_not_waited_for(embedded_ray, tmp_path, overrides, phrase):
    from raygen.errors import UserError

    start = time.monotonic()
    with pytest.raises(UserError, match=phrase):
        run(CONFIG.from_dict(dict(name="big", storage_path=str(tmp_path), batch_size=6, steps=2, **overrides)))
    assert time.monotonic() - start < 30
