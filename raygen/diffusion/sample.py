"""Deterministic probability-flow ODE sampler (EDM Heun, Karras et al. 2022, Algorithm 1).

Used for the training loop's sample grids and as the common sampler of the SADM ablation: it needs
only D(x, sigma), so it works for any denoiser, and given the initial noise it is deterministic.
The MMDGS / Langevin / Tweedie samplers live in `raygen.sampling`.
"""

from __future__ import annotations

import torch


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Decreasing sigmas sigma_max -> sigma_min spaced uniformly in sigma^(1/rho)."""
    i = torch.arange(num_steps, dtype=torch.float64)
    inv = sigma_max ** (1 / rho) + i / max(num_steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return inv**rho


@torch.no_grad()
def heun_sample(
    denoiser,
    shape: tuple[int, ...] | None,
    generator: torch.Generator | None,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 5.0,
    labels: torch.Tensor | None = None,
    data_mean: float = 0.5,
    device: str | torch.device = "cpu",
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx/dsigma = (x - D(x, sigma)) / sigma from N(data_mean, sigma_max^2) to sigma = 0.

    The start is drawn from `generator` at `shape`, or given as `x_init` (already at noise level
    sigma_max, data_mean included; shape and generator then None): callers that draw each sample's
    noise from its own seed pass it this way. `labels` is passed to the denoiser unchanged (class
    labels or condition vectors). With energy denoisers the score needs autograd;
    `Denoiser.score` enables it internally."""
    if (x_init is None) == (shape is None or generator is None):
        raise ValueError("pass either shape and generator, or x_init")
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max).tolist() + [0.0]
    x = x_init if x_init is not None else data_mean + sigma_max * torch.randn(shape, generator=generator).to(device)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, s, labels)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:  # second-order correction except on the last step
            d_next = (x_next - denoiser(x_next, s_next, labels)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x
