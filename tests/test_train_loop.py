import json

import pytest
import torch

from raygen.diffusion.train import TrainSADMConfig, train_func
from raygen.errors import UserError
from raygen.models import load_denoiser

FAST = dict(batch_size=16, log_every=1, sample_every=0, sadm_warmup=0, sadm_lambda=0.1, checkpoint_every=2)


def _weights(ckpt):
    return torch.load(ckpt / "state.pt", weights_only=True)


def test_resume_continues_exactly(tmp_path):
    train_func(dict(FAST, name="full", storage_path=str(tmp_path), steps=4))
    train_func(dict(FAST, name="split", storage_path=str(tmp_path), steps=2))
    out = train_func(dict(FAST, name="split", storage_path=str(tmp_path), steps=4, sample_every=4))
    assert out["resumed_from"] == 2 and out["step"] == 4
    full, split = _weights(tmp_path / "full/checkpoint_000004"), _weights(tmp_path / "split/checkpoint_000004")
    for key in ("denoiser", "encoder"):
        for name, t in full["modules"][key].items():
            assert torch.equal(t, split["modules"][key][name]), name
    # the resumed loss curve continues the original, step by step
    curves = [[json.loads(l) for l in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in ("full", "split")]
    assert [r["step"] for r in curves[1]] == [1, 2, 3, 4]
    assert [r["loss"] for r in curves[0]] == [r["loss"] for r in curves[1]]
    # keep_checkpoints=2 pruned nothing yet; the checkpoint is a loadable sampler model with a grid
    assert (tmp_path / "split/samples/step_000004.png").exists()
    model = load_denoiser(tmp_path / "split/checkpoint_000004")
    assert model.score(torch.rand(2, 1, 8, 8), 0.3).shape == (2, 1, 8, 8)


def test_nonfinite_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"loss is (nan|inf) at step \d+") as info:
        train_func(dict(FAST, name="nan", storage_path=str(tmp_path), steps=6, lr=1e30, checkpoint_every=1,
                        grad_clip=0.0))
    step = int(str(info.value).split("at step ")[1].split(";")[0])
    kept = sorted(p.name for p in (tmp_path / "nan").glob("checkpoint_*"))
    assert kept and kept[-1] == f"checkpoint_{step - 1:06d}"
    assert f"(step {step - 1})" in str(info.value)


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="unknown config key 'stepz'"):
        TrainSADMConfig.from_dict({"stepz": 3})
    with pytest.raises(UserError, match="sadm_lambda"):
        TrainSADMConfig.from_dict({"sadm_lambda": -1})
    with pytest.raises(UserError, match="batch_size"):
        TrainSADMConfig.from_dict({"batch_size": 15, "num_workers": 2})


def test_energy_conditional_model_trains_and_loads_as_energy_model(tmp_path):
    out = train_func(dict(FAST, name="energy", storage_path=str(tmp_path), steps=2, energy=True, num_classes=10))
    assert out["step"] == 2 and out["loss"] == out["loss"]  # finite, not NaN
    model = load_denoiser(tmp_path / "energy/checkpoint_000002")
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert model.is_energy and model.energy(x, 0.3).shape == (2,)
