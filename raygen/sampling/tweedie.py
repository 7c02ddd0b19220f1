"""Tweedie denoising baseline: x~ = x + sigma eps, x = E[x | x~] = x~ + sigma^2 grad log q~(x~).

With one sigma and steps_per_level=1 it is one-step denoising of x_init at that sigma. With more
steps or a schedule it is the mean-only Gibbs chain (MMDGS without the covariance), which loses
the posterior variance: on one Gaussian mode N(m, c) its stationary variance is a^2 sigma^2 /
(1 - a^2), a = c / (c + sigma^2), instead of c.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raygen.sampling.mmdgs import mmdgs


def tweedie(
    model,
    x_init: torch.Tensor,
    sigmas: float | Sequence[float],
    *,
    steps_per_level: int = 1,
    seeds: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, dict]:
    return mmdgs(model, x_init, sigmas, steps_per_level=steps_per_level, covariance="none", seeds=seeds)
