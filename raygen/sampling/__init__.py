"""Samplers as pure torch functions (no Ray): MMDGS and its baselines, plus analytic targets.

Every sampler is called as f(model, x_init, sigmas, *, <its own keyword args>, seeds) and returns
(x, info): x has x_init's shape and dtype, info is a dict of ints. Sample i depends only on
seeds[i] (for batch-invariant models such as the analytic targets: bit-identical in any batch).
Keyword args per sampler:
  mmdgs:             steps_per_level, covariance ("full" | "diag" | "iso" | "none"), probes
  langevin:          steps_per_level, step_size
  annealed_langevin: steps_per_level, step_size
  tweedie:           steps_per_level
"""

from collections.abc import Callable

from raygen.sampling.annealed_langevin import annealed_langevin
from raygen.sampling.langevin import langevin
from raygen.sampling.mmdgs import mmdgs
from raygen.sampling.noise import PerSampleNoise, initial_state
from raygen.sampling.targets import TARGETS, Gaussian, GaussianMixture, compare_to_truth
from raygen.sampling.tweedie import tweedie

SAMPLERS: dict[str, Callable] = {
    "mmdgs": mmdgs,
    "langevin": langevin,
    "annealed_langevin": annealed_langevin,
    "tweedie": tweedie,
}

__all__ = [
    "SAMPLERS",
    "TARGETS",
    "Gaussian",
    "GaussianMixture",
    "PerSampleNoise",
    "annealed_langevin",
    "compare_to_truth",
    "initial_state",
    "langevin",
    "mmdgs",
    "tweedie",
]
