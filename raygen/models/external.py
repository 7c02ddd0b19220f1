"""Models raygen did not train, as sampler models: a torch module by import path, a local diffusers model.

Import path (`model: pkg.module:factory`): `factory()` (no arguments) returns an object following
the denoiser protocol, in one of two parameterisations:

- VE (EDM-style, raygen's own): `sample_shape` (the per-sample shape) and one of
  `score(x, sigma, labels)` (grad log q_sigma), `denoise(x, sigma, labels)` (E[x0 | x], score =
  (D - x) / sigma^2) or `energy(x, sigma, labels)` (-log q_sigma up to a constant, score = -grad E).
  x is [B, *sample_shape] at noise level sigma (x = x0 + sigma eps), sigma a per-sample tensor [B].
- VP (DDPM-style): `sample_shape`, `alphas_cumprod` (the discrete schedule, abar_t for t = 0..T-1),
  optionally `prediction_type` ("epsilon", the default, "sample" or "v_prediction"), and
  `module(x_t, t, labels)` returning that prediction at x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
  It is wrapped by `VPModel`, as is a local diffusers `UNet2DModel` with its scheduler.

Optional on both: `num_classes` (> 0: labels are integer class ids [B], else None is passed) and
`data_range` (lo, hi), recorded with the samples. Only an `energy` gives the symmetric Hessian that
MMDGS's full covariance needs; score-, denoise- and VP models run covariance diag, iso or none.

VP -> VE (Karras et al. 2022, the VP preconditioning): a VE state y = x0 + sigma eps is the VP state
x_t = sqrt(abar) y with sigma = sqrt((1 - abar) / abar), so abar = 1 / (1 + sigma^2) and
score(y, sigma) = -eps_hat(x_t, t) / sigma. t is fractional: log sigma is interpolated linearly
between the schedule's steps (diffusers' timestep embeddings take float timesteps). Noise levels
outside the schedule are refused, not extrapolated (`sigma_range`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raygen.errors import UserError
from raygen.imports import load_object
from raygen.models.denoiser import Conditioned, EnergyConditioned, _sigma_vector
from raygen.models.energy import energy_score

PREDICTIONS = ("epsilon", "sample", "v_prediction")
DIFFUSERS_RANGE = (-1.0, 1.0)  # diffusers' pixel models are trained on images scaled to [-1, 1]
INSTALL_DIFFUSERS = 'pip install "raygen[diffusers]"'


def _labels_for(model, labels: torch.Tensor | None) -> torch.Tensor | None:
    return labels if model.num_classes else None


class _External(nn.Module):
    """Common to the wrappers: classes (labels only for class-conditional models, no guidance:
    an external model has no null class that raygen knows of)."""

    num_classes: int = 0

    def conditioned(self, labels: torch.Tensor, guidance: float = 0.0) -> Conditioned:
        if guidance:
            raise UserError(f"config key 'guidance': {self.ref} has no unconditional (null-class) branch that "
                            "raygen knows of; set guidance=0")
        return (EnergyConditioned if hasattr(self, "energy") else Conditioned)(self, labels, 0.0)


class VEModel(_External):
    """A user's VE module (`score`, `denoise` or `energy`) as a sampler model."""

    def __init__(self, module: Any, ref: str):
        super().__init__()
        self.module, self.ref = module, ref
        self.sample_shape = _shape_of(module, ref)
        self.num_classes = int(getattr(module, "num_classes", 0) or 0)
        self.data_range = getattr(module, "data_range", None)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = _sigma_vector(sigma, x)
        labels = _labels_for(self, labels)
        if hasattr(self.module, "score"):
            return self.module.score(x, sigma, labels)
        if hasattr(self.module, "denoise"):
            return (self.module.denoise(x, sigma, labels) - x) / sigma.reshape(-1, *[1] * (x.dim() - 1)) ** 2
        # keep the graph when the caller differentiates the score (as raygen's EnergyDenoiser does)
        return energy_score(lambda y, s: self.module.energy(y, s, labels), x, sigma,
                            create_graph=torch.is_grad_enabled())


class VEEnergyModel(VEModel):
    """`VEModel` of a module with `energy`: also `HasEnergy`, so full covariance works."""

    def energy(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.module.energy(x, _sigma_vector(sigma, x), _labels_for(self, labels))


class VPModel(_External):
    """A discrete-time VP model (prediction of eps, x0 or v at timestep t) as a VE score model."""

    def __init__(self, net: nn.Module, alphas_cumprod: Sequence[float] | torch.Tensor, prediction_type: str,
                 sample_shape: Sequence[int], ref: str, num_classes: int = 0,
                 data_range: Sequence[float] | None = None):
        super().__init__()
        if prediction_type not in PREDICTIONS:
            raise UserError(f"{ref} predicts {prediction_type!r}, which raygen cannot turn into a score; known "
                            f"prediction types: {', '.join(PREDICTIONS)}")
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        # a zero-terminal-SNR schedule may end at abar = 0 (sigma = inf): the steps before it are the range
        if not (abar.numel() > 2 and abar[0] < 1 and abar[-2] > 0 and abar[-1] >= 0 and (abar[1:] < abar[:-1]).all()):
            raise UserError(f"{ref}: alphas_cumprod must be a strictly decreasing schedule in (0, 1) with at least "
                            "3 steps")
        abar = abar[abar > 0]
        self.net, self.ref, self.prediction_type = net, ref, prediction_type
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes, self.data_range = num_classes, data_range
        self.register_buffer("log_sigmas", 0.5 * torch.log((1 - abar) / abar))
        self.sigma_range = (math.exp(self.log_sigmas[0]), math.exp(self.log_sigmas[-1]))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep of each noise level: log sigma interpolated between steps."""
        table = self.log_sigmas.to(sigma.dtype)
        log_sigma = sigma.log()
        upper = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
        lo, hi = table[upper - 1], table[upper]
        return (upper - 1) + (log_sigma - lo) / (hi - lo)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = _sigma_vector(sigma, x)
        s = sigma.reshape(-1, *[1] * (x.dim() - 1))
        sqrt_abar = (1 + s**2).rsqrt()
        sqrt_one_minus = s * sqrt_abar
        x_t = sqrt_abar * x
        out = self.net(x_t, self.timestep(sigma), _labels_for(self, labels))
        if self.prediction_type == "epsilon":
            eps = out
        elif self.prediction_type == "sample":  # x0_hat: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
            eps = (x_t - sqrt_abar * out) / sqrt_one_minus
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  eps = sqrt(abar) v + sqrt(1 - abar) x_t
            eps = sqrt_abar * out + sqrt_one_minus * x_t
        return -eps / s


def _shape_of(module: Any, ref: str) -> tuple[int, ...]:
    shape = getattr(module, "sample_shape", None)
    if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise UserError(f"{ref}: the model must have sample_shape, a tuple of positive ints (the shape of one "
                        f"sample), got {shape!r}")
    return tuple(shape)


# ----------------------------------------------------------------------------- import path

def load_import_path(spec: str, search: Sequence[str] = ()) -> nn.Module:
    """`pkg.module:factory` -> the factory's model, wrapped for the samplers. The module is looked
    for in `search` (the job's working directory) before the installed packages (`raygen.imports`)."""
    factory = load_object(spec, key="model", returns="the model", search=search)
    model = factory()
    ref = f"model {spec!r}"
    if hasattr(model, "alphas_cumprod"):
        return VPModel(_AsNet(model), model.alphas_cumprod, getattr(model, "prediction_type", "epsilon"),
                       _shape_of(model, ref), ref, int(getattr(model, "num_classes", 0) or 0),
                       getattr(model, "data_range", None))
    if not any(hasattr(model, name) for name in ("score", "denoise", "energy")):
        raise UserError(f"{ref} returned a {type(model).__name__} with none of score(x, sigma, labels), "
                        "denoise(x, sigma, labels), energy(x, sigma, labels) or alphas_cumprod (a VP model); "
                        "see raygen.models.external for the protocol")
    return (VEEnergyModel if hasattr(model, "energy") else VEModel)(model, ref)


class _AsNet(nn.Module):
    """A callable (module or not) as a submodule, so that `.to(dtype)` reaches a module's weights."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x_t, t, labels):
        return self.fn(x_t, t, labels)


# ----------------------------------------------------------------------------- diffusers

def is_diffusers_dir(directory: Path) -> bool:
    """A diffusers pipeline (model_index.json) or model (config.json written by diffusers)."""
    if (directory / "model_index.json").is_file():
        return True
    config = directory / "config.json"
    return config.is_file() and "_diffusers_version" in _read_json(config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not JSON ({exc}); point model at an intact diffusers directory") from None
    return value if isinstance(value, dict) else {}


class _UNet(nn.Module):
    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_t, t, labels):
        return self.unet(x_t, t, class_labels=labels).sample


def load_diffusers(directory: Path, ref: str) -> VPModel:
    """A local diffusers UNet2DModel (its directory, with scheduler_config.json beside config.json) or
    pixel-space pipeline (model_index.json, unet/, scheduler/) as a `VPModel`."""
    try:
        import diffusers
    except ImportError:
        raise UserError(f"{ref} is a diffusers model, and diffusers is not installed; {INSTALL_DIFFUSERS}") from None
    unet_dir, scheduler_file = directory, directory / "scheduler_config.json"
    if (directory / "model_index.json").is_file():
        index = _read_json(directory / "model_index.json")
        latent = [name for name in ("vae", "vqvae") if name in index]
        if latent:
            missing = "" if (directory / latent[0]).is_dir() else f" and its {latent[0]}/ is missing"
            raise UserError(f"{ref} is a latent-diffusion pipeline ({index.get('_class_name')}){missing}: its UNet "
                            "draws latents, not images, and raygen samples pixel-space models only "
                            "(UNet2DModel pipelines such as DDPMPipeline)")
        unet_dir, scheduler_file = directory / "unet", directory / "scheduler" / "scheduler_config.json"
    if not (unet_dir / "config.json").is_file():
        raise UserError(f"{ref}: no {unet_dir / 'config.json'}; point model at a UNet2DModel directory or a "
                        "pipeline directory holding unet/ and scheduler/")
    if not scheduler_file.is_file():
        raise UserError(f"{ref}: no {scheduler_file}; the noise schedule is needed to turn the UNet into a score "
                        "(save the scheduler next to the UNet: scheduler.save_pretrained(<the UNet directory>))")
    unet_class = _read_json(unet_dir / "config.json").get("_class_name")
    if unet_class != "UNet2DModel":
        raise UserError(f"{ref}: its UNet is a {unet_class}; raygen samples UNet2DModel (unconditional or "
                        "class-conditional), not text- or image-conditioned UNets")
    unet = diffusers.UNet2DModel.from_pretrained(unet_dir).eval()
    if unet.config.class_embed_type is not None:
        raise UserError(f"{ref}: class_embed_type={unet.config.class_embed_type!r} takes continuous class inputs; "
                        "raygen passes integer class labels (num_class_embeds with class_embed_type None)")
    scheduler_config = _read_json(scheduler_file)
    scheduler_class = getattr(diffusers, str(scheduler_config.get("_class_name")), None)
    scheduler = scheduler_class.from_config(scheduler_config) if scheduler_class is not None else None
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise UserError(f"{ref}: scheduler {scheduler_config.get('_class_name')!r} has no discrete VP schedule "
                        "(alphas_cumprod); raygen wraps DDPM-style schedules (DDPM, DDIM, PNDM, Euler, DPM-Solver)")
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return VPModel(_UNet(unet), scheduler.alphas_cumprod, scheduler.config.get("prediction_type", "epsilon"),
                   (unet.config.in_channels, height, width), ref, int(unet.config.num_class_embeds or 0),
                   DIFFUSERS_RANGE)
