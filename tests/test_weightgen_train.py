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


class _Identity(torch.nn.Module):
    def encode(self, z):
        return z

    def decode(self, h):
        return h


class _MeanOnly(_Identity):
    def decode(self, h):
        return torch.zeros_like(h)  # every reconstruction is the zoo's mean vector


def test_ae_diagnostics_tell_a_faithful_autoencoder_from_one_that_learned_the_mean():
    import numpy as np

    from raygen.models.params import ParamLayout
    from raygen.weightgen.evaluate import accuracies
    from raygen.weightgen.normalize import WeightNorm
    from raygen.weightgen.report import ae_diagnostics, collapse_warning
    from raygen.weightgen.zoo import build_classifier, task_splits, zoo_splits
    from raygen.workloads.weightgen import WeightgenConfig
    from tests.helpers import ZOO_ARCH

    meta = {"arch": ZOO_ARCH, "base": None, "tasks": {"0": {"family": "digits", "num_classes": 10}}}
    net = build_classifier(ZOO_ARCH)
    layout = ParamLayout.of(net)
    meta["layout"] = layout.to_dict()
    thetas = torch.randn(12, layout.numel, generator=torch.Generator().manual_seed(0))
    test = task_splits(meta["tasks"]["0"], zoo_splits(meta))["test"]
    acc = accuracies(net.eval(), layout, thetas, {"test": test})["test"]
    cols = {"task_id": np.zeros(12, dtype=np.int64), "test_acc": np.asarray(acc)}
    assert np.std(acc) > 0  # random networks do differ in accuracy: the originals have a spread
    norm, cfg = WeightNorm.fit(thetas, layout), WeightgenConfig()
    faithful = ae_diagnostics(cfg, thetas, cols, meta, _Identity(), norm)
    assert faithful["recon_acc_corr"] > 0.999 and not faithful["collapsed"] and collapse_warning(faithful) is None
    assert abs(faithful["recon_acc_std"] - faithful["orig_acc_std"]) < 1e-6
    assert abs(faithful["normalized_dim_std"] - 1) < 1e-6  # per-weight z-scores: unit spread per dimension
    mean_only = ae_diagnostics(cfg, thetas, cols, meta, _MeanOnly(), norm)
    assert mean_only["recon_acc_std"] == 0 and mean_only["recon_acc_corr"] is None and mean_only["collapsed"]
    assert collapse_warning(mean_only).startswith("warning: the autoencoder's reconstructions collapse")
