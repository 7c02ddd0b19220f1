"""The tasks-mode diffusion stage in this process: the set encoder kind is the configured one, and
D2NWG's contrastive training freezes the encoder after its alignment phase while joint training
keeps changing it. The stage records each latent dimension's std over the zoo (its noise scale); a
stage directory trained with one scalar scale (before the key) is refused, not resumed."""

import numpy as np
import pytest
import torch

from raygen.parts import Chunks, PartStore
from raygen.train_loop import checkpoint_name
from raygen.models.params import ParamLayout
from raygen.weightgen.store import params_table
from raygen.weightgen.zoo import build_classifier
from raygen.workloads import weightgen
from raygen.errors import UserError
from raygen.weightgen.report import noise_scale
from raygen.weightgen.store import read_zoo
from raygen.weightgen.train import (DIFF_FILE, encode_zoo, load_autoencoder, load_checkpoint_file, load_diffusion,
                                    train_autoencoder, train_diffusion)
from raygen.workloads.weightgen import WeightgenConfig

ARCH = dict(in_channels=1, num_classes=3, width=2, feature_dim=4)
TASKS = {"0": {"family": "subset", "classes": [0, 1, 2]}, "1": {"family": "subset", "classes": [5, 3, 8]}}


@pytest.fixture(scope="module")
def zoo_uri(tmp_path_factory):
    """A two-task zoo of random parameter vectors (4 members per task)."""
    store = PartStore.at(str(tmp_path_factory.mktemp("zoo")), "model_id")
    layout = ParamLayout.of(build_classifier(ARCH))
    params = np.random.default_rng(0).normal(size=(8, layout.numel)).astype(np.float32)
    cols = {"model_id": list(range(8)), "task_id": [0] * 4 + [1] * 4, "seed": [0, 1, 2, 3] * 2, "step": [1] * 8,
            "params": [params], "val_acc": [0.5] * 8, "test_acc": [0.5] * 8}
    store.write(0, params_table(cols), Chunks(8, 8), {"arch": ARCH, "layout": layout.to_dict(), "base": None,
                                                       "tasks": TASKS})
    return store.uri


def _train(zoo_uri, root, **keys):
    cfg = WeightgenConfig.from_dict({"name": "t", "storage_path": root, "mode": "tasks", "task_family": "subset",
                                     "zoo_tasks": 2, "classes_per_task": 3, "latent_dim": 4, "ae_hidden": 16,
                                     "ae_steps": 5, "diff_steps": 30, "diff_batch": 8, "diff_hidden": 16,
                                     "diff_depth": 1, "cond_dim": 4, "support_shots": 2, "log_every": 10,
                                     "diff_lr": 0.01, **keys})
    ae = weightgen._train_stage(weightgen.stage_config(cfg, "ae", root, zoo_uri), train_autoencoder, False)
    final = weightgen._train_stage(weightgen.stage_config(cfg, "diffusion", root, zoo_uri, ae),
                                   train_diffusion, False)
    # checkpoints every 10 steps, the last 2 kept: steps 20 and 30
    return [load_checkpoint_file(final.replace(checkpoint_name(30), checkpoint_name(s)), DIFF_FILE)
            for s in (20, 30)], load_diffusion(final), ae


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_contrastive_training_freezes_the_aligned_encoder(zoo_uri, tmp_path):
    (at20, at30), (_, encoder), _ = _train(zoo_uri, str(tmp_path), set_encoder="set_transformer",
                                        encoder_training="contrastive", contrastive_steps=10)
    assert encoder.spec["kind"] == "set_transformer"
    assert not _changed(at20["encoder"]["weights"], at30["encoder"]["weights"])  # frozen after step 10
    assert _changed(at20["denoiser"]["weights"], at30["denoiser"]["weights"])  # the diffusion still trains


def test_joint_training_keeps_training_the_encoder(zoo_uri, tmp_path):
    (at20, at30), (denoiser, encoder), ae_uri = _train(zoo_uri, str(tmp_path))
    assert encoder.spec["kind"] == "deepsets"
    assert _changed(at20["encoder"]["weights"], at30["encoder"]["weights"])
    # the noise scale is each latent dimension's std over the zoo, as the report states it
    ae, norm, _ = load_autoencoder(ae_uri)
    h = encode_zoo(ae, norm, read_zoo(zoo_uri)[0])
    torch.testing.assert_close(torch.tensor(denoiser.spec["latent_std"]), h.std(0, correction=0))
    torch.testing.assert_close(torch.tensor(denoiser.spec["latent_mean"]), h.mean(0))
    assert (denoiser.spec["sigma_data"], denoiser.spec["data_mean"]) == (1.0, 0.0)
    assert noise_scale(denoiser.spec)["latent_std_max"] == max(denoiser.spec["latent_std"])


def test_a_scalar_scale_stage_is_refused_by_a_per_dimension_run(zoo_uri, tmp_path):
    _, (denoiser, _), _ = _train(zoo_uri, str(tmp_path), latent_scale="scalar")
    assert "latent_std" not in denoiser.spec  # the old checkpoint format
    with pytest.raises(UserError, match="latent_scale: 'scalar' -> 'dim'"):
        _train(zoo_uri, str(tmp_path))
