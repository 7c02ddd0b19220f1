"""MMDGS: the moment-matching denoising Gibbs sampler (Zhang et al., NeurIPS 2023), DESIGN.md 4.1.

A model of the noisy density q~ = p * N(0, sigma^2 I) is turned into a sampler of p by alternating
  x~ = x + sigma eps,                       eps ~ N(0, I)
  x  ~ N(mu, Sigma),  mu = x~ + sigma^2 grad log q~(x~),  Sigma = sigma^2 I + sigma^4 grad^2 log q~(x~)
(first- and second-order Tweedie). The score and Hessian are taken at the freshly drawn x~ (the
reference code's energy branch uses x~ before drawing it; this is the correct order).

Covariance variants:
- "full": Sigma from the symmetric Hessian: model.hessian if present, else autograd of
  model.energy (score-only models have no symmetric Hessian and are refused; capabilities are
  the Protocols of `raygen.models.energy`, dispatched by `raygen.sampling.curvature`). Non-PSD Sigma is
  repaired by clipping negative eigenvalues to 0 (counted in info["psd_repairs"]).
- "diag": diag(H) ~ mean_s v_s * (H v_s) with `probes` Rademacher v_s (Hutchinson/Bekas; for a
  score-only model H v is replaced by J^T v, which has the same diagonal). Negative variances are
  clipped to 0 (counted in info["clipped_variances"]).
- "iso": s^2 = sigma^2 - sigma^4 E|grad log q~|^2 / d, where E (an average over x~ ~ q~) is
  estimated per sample from that sample's own chain, never over the batch (which would couple
  samples): an exponential moving average of |score(x~)|^2 / d with weight ISO_EMA on the newest
  step, restarted at each sigma. A plain running mean keeps the burn-in's huge scores far from the
  data (single sigma = 0.2 on "mog4": within-mode variance 0.024 instead of 0.04); one step alone
  is so noisy that clipping s^2 at 0 biases the variance upwards (0.042). The EMA gives 0.040.
- "none": mean only, x = mu (the Tweedie mean-only chain; `tweedie` is this).
The returned x is the last draw from N(mu, Sigma) (the paper returns samples, not the mean).

One sigma is the paper's setting; a non-increasing schedule with steps_per_level Gibbs steps per
level is raygen's annealed extension. Sample i depends only on seeds[i]: each step draws eps, the
probes ("diag"), then the N(0, I) for x from sample i's own stream.

info: score_evals and hvp_evals are per sample (a full Hessian counts as d hvps; "diag" makes
`probes` per step); psd_repairs and clipped_variances are totals over the batch and all steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from raygen.errors import UserError
from raygen.sampling._util import check_batch, check_positive_int, check_sigmas, matvec, rowsum
from raygen.sampling.curvature import curvature
from raygen.sampling.noise import PerSampleNoise

COVARIANCES = ("full", "diag", "iso", "none")
ISO_EMA = 0.5
_FULL_NEEDS_ENERGY = (
    "covariance='full' needs a symmetric Hessian, i.e. a model with energy(x, sigma) "
    "(wrap the network in raygen.models.energy.EnergyModel), or use covariance='diag'"
)


def hessian(model, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Symmetric Hessian of log q~ at x [B, d]: [B, d, d]."""
    H = curvature(model).hessian
    if H is None:
        raise UserError(_FULL_NEEDS_ENERGY)
    H = H(x, sigma)
    return 0.5 * (H + H.transpose(-1, -2))


def diag_hessian_estimate(model, x: torch.Tensor, sigma: float, probes: int, noise: PerSampleNoise):
    """Hutchinson/Bekas estimate of diag(Hessian of log q~) at flat x [B, d], unbiased."""
    hvp = curvature(model).hvp
    total = torch.zeros_like(x)
    for _ in range(probes):
        v = noise.rademacher(x.shape[1], dtype=x.dtype, device=x.device)
        total = total + v * hvp(x, sigma, v)
    return total / probes


def mmdgs(
    model,
    x_init: torch.Tensor,
    sigmas: float | Sequence[float],
    *,
    steps_per_level: int = 1,
    covariance: str = "diag",
    probes: int = 1,
    seeds: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, dict]:
    """Run MMDGS from x_init [B, *shape] over sigmas; returns (x [B, *shape], info).

    model: has score(x, sigma) (and energy/hessian/hvp for "full"); it is called with x of
    x_init's shape, in x_init's dtype. covariance: one of "full", "diag", "iso", "none".
    probes: Rademacher probes per step for "diag". seeds: one non-negative int per sample.
    """
    sigmas = check_sigmas(sigmas)
    check_positive_int(steps_per_level, "steps_per_level")
    check_batch(x_init, seeds)
    if covariance not in COVARIANCES:
        raise UserError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    if covariance == "diag":
        check_positive_int(probes, "probes")
    if covariance == "full" and curvature(model).hessian is None:
        raise UserError(_FULL_NEEDS_ENERGY)

    B, shape = x_init.shape[0], tuple(x_init.shape[1:])
    d = math.prod(shape)
    flat_model = _Flat(model, shape)
    noise = PerSampleNoise(seeds)
    x = x_init.detach().reshape(B, d)
    randn = lambda: noise.randn(d, dtype=x.dtype, device=x.device)  # noqa: E731
    info = {"score_evals": 0, "hvp_evals": 0, "psd_repairs": 0, "clipped_variances": 0}
    mean_sq_score = None  # "iso": restarted at k = 0 of every sigma
    with torch.no_grad():
        for sigma in sigmas:
            for k in range(steps_per_level):
                x_tilde = x + sigma * randn()
                score = flat_model.score(x_tilde, sigma)
                info["score_evals"] += 1
                mu = x_tilde + sigma**2 * score
                if covariance == "none":
                    x = mu
                elif covariance == "full":
                    Sigma = sigma**2 * torch.eye(d, dtype=x.dtype, device=x.device) + sigma**4 * hessian(
                        flat_model, x_tilde, sigma
                    )
                    info["hvp_evals"] += d
                    lam, V = torch.linalg.eigh(Sigma)
                    info["psd_repairs"] += int((lam < 0).any(-1).sum())
                    # the symmetric root V sqrt(lam) V^T is unique (V is not: signs, and rotations
                    # for repeated eigenvalues), so the draw is continuous in Sigma across dtypes
                    x = mu + matvec(V, lam.clamp_min(0).sqrt() * matvec(V.transpose(-1, -2), randn()))
                else:
                    if covariance == "diag":
                        diag_H = diag_hessian_estimate(flat_model, x_tilde, sigma, probes, noise)
                        info["hvp_evals"] += probes
                        var = sigma**2 + sigma**4 * diag_H
                    else:
                        sq_score = rowsum(score * score) / d
                        mean_sq_score = sq_score if k == 0 else ISO_EMA * sq_score + (1 - ISO_EMA) * mean_sq_score
                        var = (sigma**2 - sigma**4 * mean_sq_score)[:, None]
                    info["clipped_variances"] += int((var < 0).sum())
                    x = mu + var.clamp_min(0).sqrt() * randn()
    return x.reshape(B, *shape), info


class _Flat:
    """Presents a model over x [B, *shape] as one over flat x [B, d] (the sampler's algebra is flat),
    with the model's own curvature. `hessian` is only called once "full" has checked there is one."""

    def __init__(self, model, shape: tuple[int, ...]):
        self.model, self.shape = model, shape
        self._curvature = curvature(model)

    def _unflat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def score(self, x, sigma):
        return self.model.score(self._unflat(x), sigma).reshape(x.shape)

    def hessian(self, x, sigma):
        return self._curvature.hessian(self._unflat(x), sigma)

    def hvp(self, x, sigma, v):
        return self._curvature.hvp(self._unflat(x), sigma, self._unflat(v)).reshape(x.shape)
