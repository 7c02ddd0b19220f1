"""The VE denoiser D_theta(x_tilde, sigma) with EDM preconditioning, and its energy variant.

Data live in pixel space (e.g. [0, 1]); x_tilde = x + sigma * eps. Preconditioning (Karras et al.
2022, VE form) around the data mean mu (0.5 for [0, 1] pixels, so the skip term sees centred data):

    D(x_tilde, sigma) = mu + c_skip (x_tilde - mu) + c_out F(c_in (x_tilde - mu), c_noise)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in = 1 / sqrt(sigma^2 + sigma_data^2),           c_noise = ln(sigma) / 4

Tweedie: score(x_tilde, sigma) = grad log q_sigma(x_tilde) = (D - x_tilde) / sigma^2.

Energy variant (`energy=True`, Salimans & Ho 2021 construction): with D_raw the preconditioned
network above, the scalar energy is

    E(x, sigma) = ||x - D_raw(x, sigma)||^2 / (2 sigma^2)   (per sample)

and the model's score is *defined* as its exact gradient, score = -grad_x E (autograd), so
D = x + sigma^2 score. The Hessian of log q is then the symmetric -grad^2 E, which MMDGS's full
covariance needs. When D_raw's Jacobian is small this score is close to (D_raw - x)/sigma^2, the
plain parameterisation, which is why it trains like one. Training backpropagates through grad_x E
(double backward), roughly 2-3x the cost of the plain model.

Both variants satisfy the sampler protocol of `raygen.sampling`: `score(x, sigma)`, and the energy
variant is also `raygen.sampling.energy.HasEnergy`; sigma may be a float or a per-sample tensor.
Class-conditional models are `Conditionable`: `conditioned(labels, guidance)` gives the sampler a
score (and, for energy models, energy) for fixed labels.

A model knows the data it is for: `sample_shape` (C, H, W) and `data_range` (lo, hi) are part of
its spec, so a checkpoint (`save_denoiser` -> denoiser.json + ema.pt) records them and
`load_denoiser(...).sample_shape` is the shape to sample at. `sample_shape` is None only for a
net built without data (tests) or loaded from a checkpoint written before it was recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from raygen.errors import UserError
from raygen.models.unet import SIZES
from raygen.models.energy import energy_score

PIXEL_RANGE = (0.0, 1.0)  # what raygen's image sources yield


def _sigma_vector(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma.reshape(x.shape[0])


@runtime_checkable
class Conditionable(Protocol):
    """A class-conditional model: labels 0..num_classes-1 (num_classes = 0: unconditional)."""

    num_classes: int

    def conditioned(self, labels: torch.Tensor, guidance: float = 0.0) -> Any: ...


class Denoiser(nn.Module):
    """The plain VE denoiser; `build_denoiser(energy=True)` gives the `EnergyDenoiser` subclass
    (only it has `energy`, so only it is `HasEnergy` for the samplers)."""

    is_energy = False

    def __init__(
        self,
        size: str = "tiny",
        in_channels: int = 1,
        num_classes: int = 0,
        sigma_data: float = 0.5,
        data_mean: float = 0.5,
        sample_shape: Sequence[int] | None = None,
        data_range: Sequence[float] = PIXEL_RANGE,
    ):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
        if sample_shape is not None and (len(sample_shape) != 3 or sample_shape[0] != in_channels):
            raise ValueError(f"sample_shape must be (C={in_channels}, H, W), got {tuple(sample_shape)}")
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.data_range = tuple(data_range)
        self.spec = dict(size=size, in_channels=in_channels, num_classes=num_classes, energy=self.is_energy,
                         sigma_data=sigma_data, data_mean=data_mean,
                         sample_shape=list(self.sample_shape) if self.sample_shape else None,
                         data_range=list(self.data_range))
        self.net = SIZES[size](in_channels=in_channels, num_classes=num_classes)
        self.num_classes = num_classes
        self.sigma_data = sigma_data
        self.data_mean = data_mean

    def _preconditioned(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        s = sigma[:, None, None, None]
        total = s**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = s * self.sigma_data / total.sqrt()
        c_in = 1.0 / total.sqrt()
        xc = x - self.data_mean
        return self.data_mean + c_skip * xc + c_out * self.net(c_in * xc, sigma.log() / 4, labels)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """grad_x log q_sigma(x) = (D - x) / sigma^2. Differentiable in x whenever grad mode is on."""
        sigma = _sigma_vector(sigma, x)
        return (self._preconditioned(x, sigma, labels) - x) / sigma[:, None, None, None] ** 2

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x_tilde, sigma): the denoised estimate E[x | x_tilde] = x_tilde + sigma^2 score."""
        return self._preconditioned(x, _sigma_vector(sigma, x), labels)

    def conditioned(self, labels: torch.Tensor, guidance: float = 0.0) -> "Conditioned":
        """A score (and, for energy models, energy) model for fixed per-sample labels, with
        classifier-free guidance weight `guidance`."""
        return (EnergyConditioned if self.is_energy else Conditioned)(self, labels, guidance)


class EnergyDenoiser(Denoiser):
    """E(x, sigma) = ||x - D_raw(x, sigma)||^2 / (2 sigma^2); score = -grad_x E; D = x + sigma^2 score."""

    is_energy = True

    def energy(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample scalar energy with score = -grad_x E."""
        sigma = _sigma_vector(sigma, x)
        residual = x - self._preconditioned(x, sigma, labels)
        return residual.flatten(1).pow(2).sum(1) / (2 * sigma**2)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # keep the graph when the caller differentiates further (training, Hessian-vector products)
        return energy_score(lambda y, s: self.energy(y, s, labels), x, sigma, create_graph=torch.is_grad_enabled())

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma_v = _sigma_vector(sigma, x)
        return x + sigma_v[:, None, None, None] ** 2 * self.score(x, sigma_v, labels)


def build_denoiser(size: str = "tiny", in_channels: int = 1, num_classes: int = 0, energy: bool = False,
                   sigma_data: float = 0.5, data_mean: float = 0.5, sample_shape: Sequence[int] | None = None,
                   data_range: Sequence[float] = PIXEL_RANGE) -> Denoiser:
    """Construct from a spec (the keys of `Denoiser.spec`, as saved in checkpoints)."""
    cls = EnergyDenoiser if energy else Denoiser
    return cls(size, in_channels, num_classes, sigma_data, data_mean, sample_shape, data_range)


class Conditioned:
    """Sampler-protocol view of a class-conditional Denoiser for fixed labels.

    Classifier-free guidance with weight w: score = (1 + w) score(x | y) - w score(x | null);
    the energy combines the same way, so score = -grad E still holds.
    """

    def __init__(self, model: Denoiser, labels: torch.Tensor, guidance: float):
        if model.num_classes == 0:
            raise ValueError("the model is unconditional (num_classes=0); it cannot be conditioned on labels")
        self.model, self.labels, self.guidance = model, labels, guidance

    def _mix(self, fn, x, sigma):
        labels = self.labels.to(x.device)
        out = fn(x, sigma, labels)
        if self.guidance == 0.0:
            return out
        null = torch.full_like(labels, self.model.num_classes)
        return (1 + self.guidance) * out - self.guidance * fn(x, sigma, null)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        return self._mix(self.model.score, x, sigma)


class EnergyConditioned(Conditioned):
    """`Conditioned` for an energy model: also `HasEnergy`, with the guided energy."""

    def energy(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        return self._mix(self.model.energy, x, sigma)


SPEC_FILE = "denoiser.json"
WEIGHTS_FILE = "ema.pt"  # the EMA weights: what sampling should use


def save_denoiser(model: Denoiser, state_dict: dict[str, Any], directory: str | Path) -> None:
    """Write the files `load_denoiser` reads: the constructor spec and a weight state dict."""
    directory = Path(directory)
    (directory / SPEC_FILE).write_text(json.dumps(model.spec, indent=2))
    torch.save(state_dict, directory / WEIGHTS_FILE)


def load_denoiser(checkpoint_dir: str | Path, map_location: str = "cpu") -> Denoiser:
    """Rebuild a trained denoiser (EMA weights, eval mode) from a raygen training checkpoint."""
    directory = Path(checkpoint_dir)
    spec_path = directory / SPEC_FILE
    if not spec_path.exists():
        raise UserError(f"{directory} is not a raygen denoiser checkpoint (no {SPEC_FILE}); "
                        "pass a checkpoint_* directory written by `raygen train`")
    fix = "pass a checkpoint_* directory written by `raygen train` (this one is damaged or not raygen's)"
    try:
        spec = json.loads(spec_path.read_text())
        model = build_denoiser(**spec)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:  # not JSON, not a mapping, unknown or bad keys
        raise UserError(f"{spec_path} is not a denoiser spec ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:100]}); {fix}") from None
    from raygen.train_loop import load_weights

    try:
        model.load_state_dict(load_weights(directory / WEIGHTS_FILE, fix, map_location))
    except (RuntimeError, KeyError, TypeError) as exc:  # weights of another model
        raise UserError(f"{directory / WEIGHTS_FILE} does not fit {SPEC_FILE}'s model ({type(exc).__name__}); "
                        f"{fix}") from None
    return model.eval()
