"""Distances between two sets of feature vectors (rows), computed in float64.

- Fréchet distance of Gaussians fitted to the sets (FID's formula, Heusel et al. 2017):
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2). The matrix square root uses the
  symmetric form, so an eigendecomposition suffices (no complex parts, as scipy.sqrtm can give).
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3,
  averaged over random subsets.
- MMD^2 (unbiased) with a Gaussian kernel of bandwidth `bandwidth`.
- Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'|: `energy_distance` (V-statistic, >= 0) and
  `energy_distance_unbiased` (U-statistic), two estimators under two names.
"""

from __future__ import annotations

import torch


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64).cpu()


def frechet_gaussians(mu1, Sigma1, mu2, Sigma2) -> float:
    mu1, Sigma1, mu2, Sigma2 = map(_f64, (mu1, Sigma1, mu2, Sigma2))
    evals, evecs = torch.linalg.eigh(Sigma1)
    root1 = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root1 @ Sigma2 @ root1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(Sigma1) + torch.trace(Sigma2) - 2 * cross)


def frechet_distance(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets."""
    f1, f2 = _f64(features1), _f64(features2)
    return frechet_gaussians(f1.mean(0), torch.cov(f1.T), f2.mean(0), torch.cov(f2.T))


def _unbiased_mmd2(Kxx: torch.Tensor, Kyy: torch.Tensor, Kxy: torch.Tensor) -> float:
    m, n = Kxx.shape[0], Kyy.shape[0]
    xx = (Kxx.sum() - Kxx.diagonal().sum()) / (m * (m - 1))
    yy = (Kyy.sum() - Kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * Kxy.mean())


def kid(features1, features2, *, subsets: int = 10, subset_size: int = 500, generator: torch.Generator) -> tuple[float, float]:
    """Kernel inception distance in the given features: (mean, std) over random subsets."""
    f1, f2 = _f64(features1), _f64(features2)
    d = f1.shape[1]
    size = min(subset_size, len(f1), len(f2))
    values = []
    for _ in range(subsets):
        x = f1[torch.randperm(len(f1), generator=generator)[:size]]
        y = f2[torch.randperm(len(f2), generator=generator)[:size]]
        k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
        values.append(_unbiased_mmd2(k(x, x), k(y, y), k(x, y)))
    v = torch.tensor(values)
    return float(v.mean()), float(v.std()) if subsets > 1 else 0.0


def mmd2_gaussian(x, y, bandwidth: float) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))."""
    x, y = _f64(x), _f64(y)
    k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))  # noqa: E731
    return _unbiased_mmd2(k(x, x), k(y, y), k(x, y))


def energy_distance(x, y) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'|, V-statistic (all pairs incl. i = j): >= 0, biased."""
    x, y = _f64(x), _f64(y)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def energy_distance_unbiased(x, y) -> float:
    """The same distance as a U-statistic (within-set pairs i != j): unbiased, can be slightly < 0."""
    x, y = _f64(x), _f64(y)

    def within(a: torch.Tensor) -> torch.Tensor:
        n = len(a)
        return torch.cdist(a, a).sum() / (n * (n - 1))

    return float(2 * torch.cdist(x, y).mean() - within(x) - within(y))
