"""Annealed Langevin dynamics (Song & Ermon, NeurIPS 2019): ULA through a decreasing sigma
schedule with step alpha_i = step_size * sigma_i^2 / sigma_L^2 (sigma_L = the last, smallest)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raygen.sampling._util import check_sigmas
from raygen.sampling.langevin import check_step_size, ula


def annealed_langevin(
    model,
    x_init: torch.Tensor,
    sigmas: float | Sequence[float],
    *,
    steps_per_level: int = 1,
    step_size: float,
    seeds: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, dict]:
    """steps_per_level ULA steps per sigma; step_size is the step at the last level (eps in the
    paper). Returns the last iterate (no final denoising step)."""
    sigmas = check_sigmas(sigmas)
    eps = check_step_size(step_size)
    levels = [(s, eps * s**2 / sigmas[-1] ** 2) for s in sigmas]
    return ula(model, x_init, levels, steps_per_level, seeds)
