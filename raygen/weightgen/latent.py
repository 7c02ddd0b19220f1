"""Conditional latent diffusion over vectors, reusing raygen's EDM denoiser, loss and noise schedule.

Latent vectors h [B, D] are carried as one-row images [B, 1, 1, D], so `raygen.models.Denoiser`'s
EDM preconditioning (Karras et al. 2022), `raygen.diffusion.DenoisingLoss` and
`raygen.diffusion.karras_sigmas` apply unchanged; `VectorDenoiser` only swaps the U-Net for an
MLP F(c_in (h - mu), c_noise, c) that also takes a condition vector c (D2NWG's dataset embedding;
absent for p-diff).

Noise levels per latent dimension (`LatentScale`, `latent_scale: dim`, the default): the diffusion runs
on z = (h - mean_d) / std_d, each latent dimension standardised by its own mean and std over the zoo,
with sigma_data = 1 and EDM's sigma distribution moved to it (`DenoisingLoss.at_scale(1)`). Noise level
sigma is then sigma * std_d in latent units: every dimension is at the same signal-to-noise ratio
1 / sigma^2 at every level, and EDM's preconditioning and loss weight (which assume each coordinate
has std sigma_data) hold in every dimension. With one scalar std (`latent_scale: scalar`, runs made
before the key), a dimension of std 0.1 among dimensions of std 2 is drowned at sigma ~ 0.1, a level
EDM then treats as almost clean, so its distribution is learnt only in the last, smallest steps; a
dimension of std 10 keeps its signal up to sigma ~ 10, beyond most training levels. Only the diagonal
is standardised (correlations between dimensions are left to the denoiser). The sampler's range
(sigma_min 0.002, sigma_max 80) is in standardised units: 80 data stds in every dimension.

Sampling integrates the probability-flow ODE dh/dsigma = (h - D(h, sigma, c)) / sigma with Heun's
method (EDM Algorithm 1) from h ~ N(mu, sigma_max^2 I). The initial state of sample i is drawn from
its own seed (`raygen.sampling.initial_state`) and the ODE is deterministic, so a sample depends
only on its seed and condition. Deviation from p-diff / D2NWG: they use DDPM (T = 1000 / 1024,
epsilon prediction, ancestral sampling); raygen's EDM formulation needs ~30 steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from raygen.diffusion.losses import DenoisingLoss
from raygen.diffusion.sample import heun_sample
from raygen.models.denoiser import Denoiser
from raygen.sampling import initial_state


def as_rows(h: torch.Tensor) -> torch.Tensor:
    """[B, D] -> the [B, 1, 1, D] image view the EDM code expects."""
    return h[:, None, None, :]


class MLP(nn.Sequential):
    def __init__(self, dims: Sequence[int]):
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        super().__init__(*layers[:-1])


class ConditionalMLP(nn.Module):
    """F(x, c_noise, c): residual MLP; the noise level (sinusoidal features) and the condition
    vector are added to every block's input."""

    def __init__(self, dim: int, cond_dim: int = 0, hidden: int = 256, depth: int = 3, freq: int = 32):
        super().__init__()
        self.freq = freq
        self.inp = nn.Linear(dim, hidden)
        self.t_emb = MLP([2 * freq, hidden, hidden])
        self.c_emb = MLP([cond_dim, hidden, hidden]) if cond_dim else None
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), MLP([hidden, 2 * hidden, hidden]))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[1].weight)  # start as D = c_skip x: the identity-like EDM initialisation
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        k = torch.arange(self.freq, dtype=x.dtype, device=x.device)
        angles = c_noise[:, None] * torch.exp(-math.log(1e4) * k / self.freq)[None] * 100
        e = self.t_emb(torch.cat([angles.sin(), angles.cos()], 1))
        if self.c_emb is not None:
            e = e + self.c_emb(cond)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h).reshape(x.shape)


@dataclass
class LatentScale:
    """Each latent dimension's mean and std over the zoo (population std): the diffusion's coordinates
    are z = (h - mean) / std, so its noise level sigma is sigma * std_d in dimension d."""
    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]

    @classmethod
    def fit(cls, h: torch.Tensor) -> "LatentScale":
        # a dimension the zoo does not vary in (std 0) is only shifted: its noise stays absolute
        std = h.std(0, correction=0)
        return cls(h.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    def whiten(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.mean.to(h)) / self.std.to(h)

    def unwhiten(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean.to(z) + self.std.to(z) * z


class VectorDenoiser(Denoiser):
    """EDM denoiser D(h, sigma, c) for vectors in the [B, 1, 1, D] view; `labels` is the condition.
    With `latent_mean` / `latent_std` (lists, one per dimension) it works on standardised latents
    (`LatentScale`; `to_latents` maps its samples back); without them (checkpoints written before
    per-dimension scales) on the latents themselves, with one scalar sigma_data and data_mean."""

    def __init__(self, dim: int, cond_dim: int = 0, hidden: int = 256, depth: int = 3, sigma_data: float = 1.0,
                 data_mean: float = 0.0, latent_mean: list[float] | None = None,
                 latent_std: list[float] | None = None):
        nn.Module.__init__(self)  # Denoiser.__init__ builds a U-Net; only its preconditioning is reused
        self.spec: dict[str, Any] = dict(dim=dim, cond_dim=cond_dim, hidden=hidden, depth=depth,
                                         sigma_data=sigma_data, data_mean=data_mean)
        self.scale = None
        if latent_std is not None:
            self.spec.update(latent_mean=list(latent_mean), latent_std=list(latent_std))
            self.scale = LatentScale(torch.tensor(latent_mean, dtype=torch.float64),
                                     torch.tensor(latent_std, dtype=torch.float64))
        self.net = ConditionalMLP(dim, cond_dim, hidden, depth)
        self.num_classes = 0
        self.sigma_data, self.data_mean = sigma_data, data_mean

    def to_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Samples of this denoiser's diffusion [N, D] in the AE's latent units."""
        return z if self.scale is None else self.scale.unwhiten(z.double()).to(z.dtype)


def latent_loss(loss_fn: DenoisingLoss, denoiser: Callable, h0: torch.Tensor, cond: torch.Tensor | None,
                generator: torch.Generator) -> torch.Tensor:
    """EDM-weighted denoising loss of latents h0 [B, D] with condition vectors cond [B, C] (or None)."""
    loss, _ = loss_fn(lambda x, sigma, _labels: denoiser(x, sigma, cond), as_rows(h0), generator)
    return loss


def sample_latents(denoiser: Callable, dim: int, seeds: Sequence[int], cond: torch.Tensor | None = None, *,
                   data_mean: float = 0.0, num_steps: int = 32, sigma_min: float = 0.002,
                   sigma_max: float = 80.0, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """One latent [D] per seed (sample i depends only on seeds[i] and cond[i]): [N, D], on `device`
    (the denoiser's; the initial noise is drawn on the CPU, so every device starts from the same)."""
    x = data_mean + initial_state(list(seeds), (1, 1, dim), scale=sigma_max, dtype=dtype, device=device)
    return heun_sample(denoiser, None, None, num_steps, sigma_min, sigma_max, cond, x_init=x)[:, 0, 0, :]
