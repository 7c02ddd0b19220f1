"""Models raygen did not train (`raygen.models.external`): a torch module by import path, a local
diffusers model. Exact checks against the Gaussian's closed form; a tiny UNet2DModel end to end."""

import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raygen.errors import UserError
from raygen.workloads.sample import ChunkSampler, SampleConfig, preflight, resolve_model, run

MEAN = np.array([1.0, -2.0])
VAR = np.array([0.5, 2.0])  # diagonal: MMDGS's diag covariance is then exact, as full would be

# x0 ~ N(MEAN, diag(VAR)) under the DDPM linear schedule: the exact eps, x0 and v predictions.
# abar at a fractional t follows log sigma linearly between steps (the documented convention).
GAUSSIAN_VP = """
import torch

T = 1000
ABAR = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)
LOG_SIGMA = 0.5 * torch.log((1 - ABAR) / ABAR)
MEAN = torch.tensor({mean}, dtype=torch.float64)
VAR = torch.tensor({var}, dtype=torch.float64)


class GaussianVP(torch.nn.Module):
    sample_shape = (2,)
    alphas_cumprod = ABAR

    def __init__(self, prediction_type):
        super().__init__()
        self.prediction_type = prediction_type

    def forward(self, x_t, t, labels):
        assert labels is None
        i = t.floor().long().clamp(0, T - 2)
        w = (t - i)[:, None]
        sigma2 = torch.exp(2 * ((1 - w) * LOG_SIGMA[i][:, None] + w * LOG_SIGMA[i + 1][:, None]))
        abar = 1 / (1 + sigma2)
        eps = (1 - abar).sqrt() * (x_t - abar.sqrt() * MEAN) / (abar * VAR + 1 - abar)
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        return {{"epsilon": eps, "sample": x0,
                 "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}}[self.prediction_type]


class GaussianVE:
    sample_shape = (2,)

    def denoise(self, x, sigma, labels):
        s2 = sigma[:, None] ** 2
        return MEAN + VAR / (VAR + s2) * (x - MEAN)


class GaussianEnergy(GaussianVE):
    def energy(self, x, sigma, labels):
        return ((x - MEAN) ** 2 / (2 * (VAR + sigma[:, None] ** 2))).sum(1)


def eps():
    return GaussianVP("epsilon")


def x0():
    return GaussianVP("sample")


def v():
    return GaussianVP("v_prediction")


def unknown():
    return GaussianVP("score")


def ve():
    return GaussianVE()


def energy():
    return GaussianEnergy()


def nothing():
    return object()
"""


@pytest.fixture
def gaussian_module(tmp_path, monkeypatch):
    """The module's name (unique: Ray workers are reused across tests), written in a working directory."""
    name = f"gauss_{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    work.mkdir()
    (work / f"{name}.py").write_text(GAUSSIAN_VP.format(mean=MEAN.tolist(), var=VAR.tolist()))
    monkeypatch.chdir(work)
    return name


def assert_gaussian(x, n):
    """Mean and covariance of n samples against N(MEAN, diag(VAR)), within 4 standard errors: mean
    sqrt(var/n), variance var sqrt(2/n), covariance sqrt(v1 v2 / n)."""
    mean, cov = x.mean(0), np.cov(x.T)
    assert np.all(np.abs(mean - MEAN) < 4 * np.sqrt(VAR / n)), mean
    assert np.all(np.abs(np.diag(cov) - VAR) < 4 * VAR * np.sqrt(2 / n)), cov
    assert abs(cov[0, 1]) < 4 * np.sqrt(VAR.prod() / n), cov


def exact_score(y, sigma):
    return -(y - MEAN) / (VAR + sigma**2)


@pytest.mark.parametrize("factory", ["eps", "x0", "v"])
def test_vp_wrapper_gives_the_exact_score_of_gaussian_data(gaussian_module, factory):
    model, shape, target, classes = resolve_model(f"{gaussian_module}:{factory}")
    assert shape == (2,) and target is None and classes == 0
    model = model.to(torch.float64)
    abar = model.net.fn.alphas_cumprod
    on_grid = torch.sqrt((1 - abar[[0, 17, 500, 998]]) / abar[[0, 17, 500, 998]])
    # the steps' own sigmas map to their integer timesteps
    assert torch.allclose(model.timestep(on_grid), torch.tensor([0.0, 17, 500, 998], dtype=torch.float64))
    assert model.sigma_range[0] == pytest.approx(float(on_grid[0]))
    y = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for sigma in [*on_grid.tolist(), 0.05, 0.2, 1.0, 3.0, 80.0]:
        got = model.score(y, sigma).numpy()
        np.testing.assert_allclose(got, exact_score(y.numpy(), sigma), rtol=1e-9, atol=1e-9)


def test_ve_denoise_and_energy_modules_give_the_exact_score(gaussian_module):
    y = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for factory in ("ve", "energy"):
        model = resolve_model(f"{gaussian_module}:{factory}")[0]
        np.testing.assert_allclose(model.score(y, 0.7).numpy(), exact_score(y.numpy(), 0.7), rtol=1e-9, atol=1e-12)
    # full covariance: allowed with an energy (a symmetric Hessian), refused for score-only models
    config = SampleConfig(model=f"{gaussian_module}:energy", covariance="full", levels=4, steps_per_level=2)
    sampler = ChunkSampler(config.to_dict(), 1, preflight(config))
    n = 1000
    x, _, info, _ = sampler.draw(np.arange(n))
    assert_gaussian(x.numpy(), n)
    assert info["psd_repairs"] == 0
    for factory in ("ve", "eps"):
        with pytest.raises(UserError, match="'covariance': 'full' needs a symmetric Hessian"):
            preflight(SampleConfig(model=f"{gaussian_module}:{factory}", covariance="full"))


@pytest.mark.parametrize("model, match", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("broken_dep:f", "importing 'broken_dep' .* needs 'not_installed_dep_xyz', which is not installed"),
    ("broken_syntax:f", r"broken_syntax.py, line 1: .*fix the module"),
    ("{mod}:missing", "has no function 'missing'"),
    ("{mod}:nothing", "none of score"),
    ("{mod}:unknown", "predicts 'score', which raygen cannot turn into a score"),
])
def test_import_path_refusals_are_one_clear_line(gaussian_module, model, match):
    Path("broken_dep.py").write_text("import not_installed_dep_xyz\n")
    Path("broken_syntax.py").write_text("def f(:\n")
    with pytest.raises(UserError, match=match):
        preflight(SampleConfig(model=model.format(mod=gaussian_module), covariance="diag"))


def test_sigmas_outside_the_schedule_are_refused(gaussian_module):
    with pytest.raises(UserError, match="'sigma_max': 500 is outside the noise levels"):
        preflight(SampleConfig(model=f"{gaussian_module}:eps", covariance="diag", sigma_max=500.0))


def test_mmdgs_on_ray_reproduces_the_gaussian_from_its_exact_eps(gaussian_module, tmp_path, ray_local):
    """The module lives in the driver's working directory, not the Ray workers': they find it."""
    n = 1000
    summary = run(SampleConfig(name="vp", storage_path=str(tmp_path / "runs"), model=f"{gaussian_module}:eps",
                               covariance="diag", probes=1, n_samples=n, chunk_size=250, num_actors=2,
                               stats_samples=n))
    table = pq.read_table(Path(summary["samples_dir"]))
    x = np.stack(table["sample"].to_numpy(zero_copy_only=False))
    assert x.shape == (n, 2) and sorted(table["sample_id"].to_pylist()) == list(range(n))
    assert_gaussian(x, n)


# ----------------------------------------------------------------------------- diffusers

def tiny_unet(num_classes=None):
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 num_class_embeds=num_classes)


def save_unet(directory: Path, prediction_type="epsilon", num_classes=None, scheduler="DDPMScheduler"):
    import diffusers

    tiny_unet(num_classes).save_pretrained(directory)
    getattr(diffusers, scheduler)(num_train_timesteps=1000, prediction_type=prediction_type).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusers_unet_score_is_the_vp_formula(tmp_path, prediction_type):
    directory = save_unet(tmp_path / "unet", prediction_type, num_classes=3)
    model, shape, target, classes = resolve_model(str(directory))
    assert shape == (1, 8, 8) and target is None and classes == 3 and model.data_range == (-1.0, 1.0)
    unet = model.net.unet
    abar = torch.as_tensor(__import__("diffusers").DDPMScheduler(num_train_timesteps=1000).alphas_cumprod)
    t, labels = 40, torch.tensor([0, 1, 2, 1])
    sigma = float(torch.sqrt((1 - abar[t]) / abar[t]))
    y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x_t = y / (1 + sigma**2) ** 0.5
    with torch.no_grad():
        out = unet(x_t, torch.full((4,), float(t)), class_labels=labels).sample
        a, b = abar[t].sqrt(), (1 - abar[t]).sqrt()
        eps = {"epsilon": out, "sample": (x_t - a * out) / b, "v_prediction": a * out + b * x_t}[prediction_type]
        got = model.conditioned(labels).score(y, sigma)
    torch.testing.assert_close(got, -eps / sigma, rtol=1e-4, atol=1e-4)


def test_diffusers_refusals(tmp_path, monkeypatch):
    import json
    import sys

    import diffusers

    ve = save_unet(tmp_path / "ve", scheduler="DDPMScheduler")
    diffusers.ScoreSdeVeScheduler().save_pretrained(ve)  # replaces the schedule with a VE one
    cases = [(str(ve), "no discrete VP schedule")]
    latent = tmp_path / "ldm"
    latent.mkdir()
    (latent / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline", "_diffusers_version": "0.42.1",
                                                          "unet": ["diffusers", "UNet2DModel"],
                                                          "vqvae": ["diffusers", "VQModel"]}))
    cases.append((str(latent), "latent-diffusion pipeline .* its vqvae/ is missing"))
    cond = tmp_path / "cond"
    cond.mkdir()
    (cond / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "_diffusers_version": "x"}))
    (cond / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    cases.append((str(cond), "UNet2DConditionModel; raygen samples UNet2DModel"))
    labelled = save_unet(tmp_path / "labelled", num_classes=3)
    for model, match in cases:
        with pytest.raises(UserError, match=match):
            preflight(SampleConfig(model=model, covariance="diag"))
    with pytest.raises(UserError, match="'guidance'.*no unconditional"):
        preflight(SampleConfig(model=str(labelled), covariance="diag", guidance=1.0))
    with pytest.raises(UserError, match="'covariance': 'full'"):
        preflight(SampleConfig(model=str(labelled)))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    with pytest.raises(UserError, match=r"diffusers is not installed; pip install \"raygen\[diffusers\]\""):
        preflight(SampleConfig(model=str(labelled), covariance="diag"))


def test_tiny_diffusers_pipeline_samples_end_to_end_on_ray(tmp_path, ray_local):
    import diffusers

    pipeline = tmp_path / "pipeline"
    unet = tiny_unet(num_classes=3)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        pipeline)
    config = SampleConfig(name="unet", storage_path=str(tmp_path / "runs"), model=str(pipeline), covariance="diag",
                          levels=2, steps_per_level=1, sigma_max=2.0, sigma_min=0.5, n_samples=12, chunk_size=6,
                          num_actors=1, dtype="float32", stats_samples=12)
    summary = run(config)
    table = pq.read_table(Path(summary["samples_dir"]))
    assert sorted(table["sample_id"].to_pylist()) == list(range(12))
    by_id = dict(zip(table["sample_id"].to_pylist(), table["label"].to_pylist()))
    assert [by_id[i] for i in range(12)] == [i % 3 for i in range(12)]  # labels cycle through the classes
    x = np.stack(table["sample"].to_numpy(zero_copy_only=False))
    assert x.shape == (12, 64) and np.isfinite(x).all() and x.std() > 0
    assert summary["settings"]["shape"] == [1, 8, 8] and summary["settings"]["data_range"] == [-1.0, 1.0]
    assert Path(summary["preview"]).is_file()
    # a sample depends only on its own seed: the same ids drawn in this process match the Ray worker's
    rows, _ = ChunkSampler(config.to_dict(), 6, resolve_model(str(pipeline)))(1)
    np.testing.assert_allclose(np.stack(rows["sample"].to_numpy(zero_copy_only=False)), x[np.argsort(
        table["sample_id"].to_numpy())][6:12], rtol=1e-5, atol=1e-5)

