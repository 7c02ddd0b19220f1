"""SADM training specifics: config checks, energy models, and checkpoints that record their data shape."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from raygen.diffusion.train import TrainSADMConfig, train_func
from raygen.errors import UserError
from raygen.models import load_denoiser
from raygen.sampling import initial_state, mmdgs

FAST = dict(batch_size=16, log_every=1, sample_every=0, sadm_warmup=0, sadm_lambda=0.1, checkpoint_every=2)


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="unknown config key 'stepz'"):
        TrainSADMConfig.from_dict({"stepz": 3})
    with pytest.raises(UserError, match="sadm_lambda"):
        TrainSADMConfig.from_dict({"sadm_lambda": -1})
    with pytest.raises(UserError, match="batch_size"):
        TrainSADMConfig.from_dict({"batch_size": 15, "num_workers": 2})
    with pytest.raises(UserError, match="config key 'sample_every': must be >= 0"):
        TrainSADMConfig.from_dict({"sample_every": -1})


def test_channels_that_do_not_match_the_data_are_one_line(tmp_path):
    with pytest.raises(UserError, match="have 1 channels but channels=3; set channels: 1"):
        train_func(dict(FAST, name="c", storage_path=str(tmp_path), steps=1, channels=3))


def test_energy_conditional_model_trains_and_loads_as_energy_model(tmp_path):
    out = train_func(dict(FAST, name="energy", storage_path=str(tmp_path), steps=2, energy=True, num_classes=10))
    assert out["step"] == 2 and math.isfinite(out["loss"])
    model = load_denoiser(tmp_path / "energy/checkpoint_000002")
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert model.is_energy and model.energy(x, 0.3).shape == (2,)


def test_checkpoint_records_the_trained_size_and_samples_at_it(tmp_path, ray_local):
    """12x12 is neither size a model_size used to imply (8 for tiny, 32 for small)."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (10, 10), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "images" / label / f"{i}.png")
    train_func(dict(FAST, name="size12", storage_path=str(tmp_path), data=str(tmp_path / "images"), image_size=12,
                    batch_size=8, steps=2, num_classes=2, sample_every=2, num_samples=4))
    model = load_denoiser(tmp_path / "size12/checkpoint_000002")
    assert model.sample_shape == (1, 12, 12) and model.data_range == (0.0, 1.0)
    assert model.spec["sample_shape"] == [1, 12, 12]
    grid = Image.open(tmp_path / "size12/samples/step_000002.png")
    assert grid.size[0] > 2 * 12  # a 2x2 grid of 12x12 samples (upscaled)
    seeds = list(range(3))
    x, _ = mmdgs(model.conditioned(torch.tensor([0, 1, 0]), 0.0), initial_state(seeds, model.sample_shape, dtype=torch.float32),
                 [1.0, 0.1], covariance="iso", seeds=seeds)
    assert x.shape == (3, 1, 12, 12) and torch.isfinite(x).all()


def test_more_class_folders_than_num_classes_is_one_line(tmp_path):
    from raygen.workloads.train import check_classes

    for c in ("a", "b", "c"):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / c / "0.png")
    config = TrainSADMConfig.from_dict({"data": str(tmp_path / "data"), "num_classes": 2})
    with pytest.raises(UserError, match="config key 'num_classes': .* has 3 classes \\(a, b, c\\) but num_classes is 2"):
        check_classes(config)
    check_classes(config.replace(num_classes=3))
    check_classes(config.replace(num_classes=0))
    with pytest.raises(UserError, match="has 10 classes"):
        check_classes(TrainSADMConfig.from_dict({"data": "digits", "num_classes": 5}))


def test_digit_batches_split_each_global_batch_between_ranks():
    """Two ranks' batches are disjoint and together are exactly the one-worker run's batches, also
    when resumed mid-epoch (batch 40 is in the second epoch of 28 batches of 64)."""
    from raygen.diffusion.train import _digit_batches

    for start in (0, 40):
        plain = _digit_batches(seed=3, per_worker=64, start=start)
        ranks = [_digit_batches(seed=3, per_worker=32, start=start, rank=r, world=2) for r in (0, 1)]
        for _ in range(30):
            x, y = next(plain)
            (x0, y0), (x1, y1) = next(ranks[0]), next(ranks[1])
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_init_from_a_damaged_checkpoint_asks_for_another_one(tmp_path):
    """Deleting a checkpoint handed in with init_from would not help (it is not this run's): the line
    says to pass another one, not the resume advice."""
    from raygen.diffusion.train import init_from

    checkpoint = tmp_path / "checkpoint_000004"
    checkpoint.mkdir()
    (checkpoint / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="state.pt is damaged.*; pass an undamaged checkpoint_\\* directory as init_from") as e:
        init_from(None, str(checkpoint))
    assert "delete" not in str(e.value)
