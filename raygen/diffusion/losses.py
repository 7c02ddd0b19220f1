"""Denoising loss with EDM sigma sampling and weighting (Karras et al. 2022).

sigma ~ exp(N(p_mean, p_std^2)) (log-normal; EDM's -1.2, 1.2 put the median at 0.3, where the
perceptual content of [0, 1] images is decided). Weight w(sigma) = (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2, the inverse of the optimal denoiser's error when data have std sigma_data:
then the weighted loss of the exact posterior-mean denoiser is 1 per dimension at every sigma, so
no noise level dominates the gradient. The loss is averaged over pixels and the batch (the SADM
per-sample loss w(lambda_t) ||x0 - x_hat||^2 / |B| up to the per-pixel normalisation).

Label dropout (class-conditional models): each label is replaced by the null label
(`num_classes`) with probability `label_dropout`, drawn from the same generator, so the model also
learns the unconditional score for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

DenoiserFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def sample_sigma(n: int, p_mean: float, p_std: float, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    return (p_mean + p_std * torch.randn(n, generator=generator, dtype=dtype)).exp()


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@dataclass
class DenoisingLoss:
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    num_classes: int = 0
    label_dropout: float = 0.0

    def __call__(
        self, denoiser: DenoiserFn, x0: torch.Tensor, generator: torch.Generator, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (weighted loss, x_hat = D(x_tilde, sigma)). Randomness drawn on CPU from `generator`
        in a fixed order (sigma, noise, label dropout) so runs are reproducible on any device."""
        n = x0.shape[0]
        sigma = sample_sigma(n, self.p_mean, self.p_std, generator, x0.dtype).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        if labels is not None and self.num_classes > 0 and self.label_dropout > 0:
            drop = (torch.rand(n, generator=generator) < self.label_dropout).to(labels.device)
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        elif self.num_classes == 0:
            labels = None
        x_tilde = x0 + sigma[:, None, None, None] * eps
        x_hat = denoiser(x_tilde, sigma, labels)
        per_sample = (x_hat - x0).flatten(1).pow(2).mean(1)
        return (edm_weight(sigma, self.sigma_data) * per_sample).mean(), x_hat
