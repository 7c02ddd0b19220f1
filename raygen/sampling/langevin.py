"""Unadjusted Langevin (ULA) on the noisy model at one sigma: a baseline for MMDGS.

x <- x + alpha grad log q~(x) + sqrt(2 alpha) z. With an exact score this samples (up to the
step-size bias) the noisy density q~ at sigma, not the clean data p: no denoising is applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from raygen.errors import UserError
from raygen.sampling._util import check_batch, check_positive_int, check_sigmas
from raygen.sampling.noise import PerSampleNoise


def check_step_size(step_size: float) -> float:
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise UserError(f"step_size must be a number > 0, got {step_size!r}")
    return float(step_size)


def ula(model, x_init, levels: list[tuple[float, float]], steps_per_level: int, seeds):
    """ULA through (sigma, alpha) levels, steps_per_level steps each; sample i uses seeds[i] only."""
    check_positive_int(steps_per_level, "steps_per_level")
    check_batch(x_init, seeds)
    noise = PerSampleNoise(seeds)
    x = x_init.detach()
    shape = tuple(x.shape[1:])
    with torch.no_grad():
        for sigma, alpha in levels:
            for _ in range(steps_per_level):
                z = noise.randn(*shape, dtype=x.dtype, device=x.device)
                x = x + alpha * model.score(x, sigma) + math.sqrt(2 * alpha) * z
    return x, {"score_evals": len(levels) * steps_per_level, "hvp_evals": 0}


def langevin(
    model,
    x_init: torch.Tensor,
    sigmas: float | Sequence[float],
    *,
    steps_per_level: int = 1,
    step_size: float,
    seeds: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, dict]:
    """ULA at sigma = sigmas[-1] with a fixed step_size for len(sigmas) * steps_per_level steps
    (the same score-evaluation budget as the annealed samplers given the same arguments)."""
    sigmas = check_sigmas(sigmas)
    alpha = check_step_size(step_size)
    return ula(model, x_init, [(sigmas[-1], alpha)] * len(sigmas), steps_per_level, seeds)
