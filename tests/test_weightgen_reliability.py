"""`raygen weightgen` under failures: a SIGKILLed zoo worker process, and a SIGKILLed Ray Train worker of the
autoencoder stage, 2 workers (DDP through the loss-as-forward; tiny budgets; the same kill on 2 simulated
nodes is tests/test_workloads_train.py's)."""

import json

import numpy as np
import pytest
import torch

from raygen.parts import Chunks, PartStore
from raygen.weightgen.store import read_zoo
from raygen.weightgen.train import load_autoencoder, train_autoencoder
from raygen.workloads import weightgen, zoo
from tests.helpers import ZOO_ARCH, kill_mid_run, task_workers, write_zoo_part

pytestmark = pytest.mark.ray

ZOO = dict(mode="tasks", task_family="subset", zoo_tasks=2, classes_per_task=3, seeds=4, member_steps=30)


def _collect(tmp_path, name, **overrides) -> str:
    return zoo.run(zoo.ZooConfig.from_dict({**ZOO, "name": name, "storage_path": str(tmp_path), **overrides}))["uri"]


def test_killed_zoo_worker_still_gives_every_member_exactly_once(ray_local, tmp_path):
    reference = read_zoo(_collect(tmp_path, "clean", num_actors=1, jobs_per_part=8))

    def parts():
        return len(list((tmp_path / "killed" / "parts").glob("part-*.parquet")))

    uri, _, written_at_kill = kill_mid_run(lambda: _collect(tmp_path, "killed", num_actors=2), parts, 1,
                                           lambda: task_workers("write_chunk"))
    assert written_at_kill < 8, "the zoo was complete when the worker was killed"
    PartStore.at(uri, "model_id").verify(Chunks(8, 1), check="ids")
    thetas, cols, _ = read_zoo(uri)
    assert torch.equal(thetas, reference[0])  # bit for bit, with another chunking and actor count
    for k, v in reference[1].items():
        assert np.array_equal(cols[k], v), k


def test_killed_autoencoder_worker_resumes_from_last_checkpoint(ray_local, tmp_path):
    zoo = PartStore.at(str(tmp_path / "zoo"), "model_id")
    write_zoo_part(zoo, 0, Chunks(16, 16), ZOO_ARCH, ["head.weight", "head.bias"])
    cfg = weightgen.WeightgenConfig.from_dict({"latent_dim": 4, "ae_hidden": 16, "ae_steps": 300, "ae_batch": 8,
                                               "train_workers": 2, "log_every": 1, "max_failures": 1})
    stage = weightgen.stage_config(cfg, "ae", str(tmp_path), zoo.uri)  # a checkpoint every 100 steps

    def checkpoints():
        return len(list((tmp_path / "ae").glob("checkpoint_*/.complete")))

    uri, _, _ = kill_mid_run(lambda: weightgen._train_stage(stage, train_autoencoder, False),
                             checkpoints, 1, "RayTrainWorker")
    assert uri.endswith("checkpoint_000300")
    final = json.loads((tmp_path / "ae" / "report.json").read_text())["final"]
    assert final["step"] == 300 and final["resumed_from"] in (100, 200)  # from a checkpoint, not from step 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "ae" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 301))  # the curve continues without gaps or repeats
    ae, norm, _ = load_autoencoder(uri)  # DDP's checkpoint (loss-as-forward on 2 workers) read back
    assert norm.layout.numel == 170 and ae.decode(torch.zeros(1, 4)).shape == (1, 170)
    assert weightgen._train_stage(stage, train_autoencoder, False) == uri  # a re-run finds the finished stage
