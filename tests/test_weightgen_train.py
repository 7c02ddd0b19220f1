"""Weight generation's stage checkpoints are read without running code from the run directory."""

import os

import pytest
import torch

from raygen.errors import UserError
from raygen.weightgen.train import AE_FILE, load_autoencoder, load_checkpoint_file


class Planted:
    """What a hostile colleague could leave in a shared run directory: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_in_a_stage_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "ae" / "checkpoint_000030"
    checkpoint.mkdir(parents=True)
    torch.save({"spec": Planted(marker), "weights": {}}, checkpoint / AE_FILE)
    with pytest.raises(UserError, match=r"autoencoder\.pt is not a checkpoint raygen wrote.*--fresh"):
        load_autoencoder(str(checkpoint))
    assert not marker.exists(), "unpickling the checkpoint ran the planted command"
    # the pickle is live: loading it the unsafe way does run it (so the test above can fail)
    torch.load(checkpoint / AE_FILE, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_of_plain_tensors_and_containers_loads(tmp_path):
    saved = {"spec": {"dim": 3, "kind": "mlp"}, "weights": {"w": torch.ones(2)}, "meta": {"tasks": {"0": [1, 2]}}}
    torch.save(saved, tmp_path / AE_FILE)
    loaded = load_checkpoint_file(str(tmp_path), AE_FILE)
    assert loaded["spec"] == saved["spec"] and torch.equal(loaded["weights"]["w"], saved["weights"]["w"])
