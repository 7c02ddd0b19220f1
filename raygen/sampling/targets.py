"""Analytic data distributions with closed-form noisy energy, score and Hessian at any sigma.

Data x ~ p; the noisy density is q~ = p * N(0, sigma^2 I) (what a denoising-score-matching model
at noise level sigma learns). For Gaussian data N(m, S), q~ = N(m, S + sigma^2 I); for a mixture
sum_k w_k N(m_k, C_k), q~ = sum_k w_k N(m_k, C_k + sigma^2 I). sigma = 0 gives the data itself.

Conventions (all targets):
- energy(x, sigma) = -log q~(x), normalised (no constant dropped), shape [B];
- score(x, sigma) = grad log q~(x), shape of x; hessian(x, sigma) = Hessian of log q~, [B, d, d];
- posterior_moments(x_tilde, sigma) = (E[x | x~], Cov[x | x~]) in closed form.
Computations run in x's dtype; per-row algebra is batch-size invariant (see _util).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from raygen.metrics.distances import energy_distance_unbiased
from raygen.sampling._util import matvec, rowsum


def _sym(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.transpose(-1, -2))


def _noisy_precision(cov: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(C + sigma^2 I)^-1 and log det(C + sigma^2 I), for one [d, d] or a stack [K, d, d]."""
    C = cov + sigma**2 * torch.eye(cov.shape[-1], dtype=cov.dtype)
    return _sym(torch.linalg.inv(C)), torch.linalg.slogdet(C)[1]


def _posterior_gain(cov: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian prior C, likelihood N(x~; x, sigma^2 I): gain A = C (C + sigma^2 I)^-1 and the
    posterior covariance sigma^2 (C + sigma^2 I)^-1 C."""
    P, _ = _noisy_precision(cov, sigma)
    return cov @ P, _sym(sigma**2 * P @ cov)


def _outer(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., :, None] * v[..., None, :]


def _sum_over_components(t: torch.Tensor) -> torch.Tensor:
    """Fixed-order sum over dim 1 (the mixture components) of [B, K, ...]."""
    return rowsum(t.movedim(1, -1))


def _logsumexp(a: torch.Tensor) -> torch.Tensor:
    top = a.amax(-1, keepdim=True)  # a max is exact in any order
    return (top + torch.log(rowsum(torch.exp(a - top))[..., None]))[..., 0]


class Gaussian:
    """Data N(mean, cov)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        self.mean = torch.as_tensor(mean)
        self.cov = _sym(torch.as_tensor(cov, dtype=self.mean.dtype))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def _params(self, sigma: float, dtype: torch.dtype):
        P, logdet = _noisy_precision(self.cov, sigma)
        return self.mean.to(dtype), P.to(dtype), logdet.to(dtype)

    def energy(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        m, P, logdet = self._params(sigma, x.dtype)
        diff = x - m
        return 0.5 * rowsum(diff * matvec(P, diff)) + 0.5 * (self.dim * math.log(2 * math.pi) + logdet)

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        m, P, _ = self._params(sigma, x.dtype)
        return -matvec(P, x - m)

    def hessian(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        _, P, _ = self._params(sigma, x.dtype)
        return (-P).expand(x.shape[0], self.dim, self.dim).clone()

    def posterior_moments(self, x_tilde: torch.Tensor, sigma: float):
        A, Sigma = _posterior_gain(self.cov, sigma)
        m = self.mean.to(x_tilde.dtype)
        mu = m + matvec(A.to(x_tilde.dtype), x_tilde - m)
        return mu, Sigma.to(x_tilde.dtype).expand(x_tilde.shape[0], self.dim, self.dim).clone()

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        L = torch.linalg.cholesky(self.cov)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype)
        return self.mean + z @ L.T

    def truth(self) -> dict:
        return {"mean": self.mean, "cov": self.cov}


class GaussianMixture:
    """Data sum_k weights[k] N(means[k], covs[k])."""

    def __init__(self, means: torch.Tensor, covs: torch.Tensor, weights: torch.Tensor):
        self.means = torch.as_tensor(means)
        dtype = self.means.dtype
        self.covs = _sym(torch.as_tensor(covs, dtype=dtype))
        w = torch.as_tensor(weights, dtype=dtype)
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x: torch.Tensor, sigma: float):
        """Per component: log(w_k N_k(x)) [B, K], grad log N_k [B, K, d], precisions [K, d, d]."""
        P, logdet = _noisy_precision(self.covs, sigma)
        P, logdet = P.to(x.dtype), logdet.to(x.dtype)
        diff = x[:, None, :] - self.means.to(x.dtype)
        g = -matvec(P, diff)
        log_wN = (
            torch.log(self.weights.to(x.dtype))
            + 0.5 * rowsum(diff * g)
            - 0.5 * (self.dim * math.log(2 * math.pi) + logdet)
        )
        return log_wN, g, P

    def _responsibilities(self, log_wN: torch.Tensor) -> torch.Tensor:
        return torch.exp(log_wN - _logsumexp(log_wN)[:, None])

    def energy(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        log_wN, _, _ = self._components(x, sigma)
        return -_logsumexp(log_wN)

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        log_wN, g, _ = self._components(x, sigma)
        r = self._responsibilities(log_wN)
        return _sum_over_components(r[..., None] * g)

    def hessian(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        # grad^2 log sum_k w_k N_k = sum_k r_k (g_k g_k^T - P_k) - s s^T
        log_wN, g, P = self._components(x, sigma)
        r = self._responsibilities(log_wN)
        s = _sum_over_components(r[..., None] * g)
        per_k = r[..., None, None] * (_outer(g, g) - P)
        return _sum_over_components(per_k) - _outer(s, s)

    def posterior_moments(self, x_tilde: torch.Tensor, sigma: float):
        # Given component k the posterior is Gaussian; mix with the responsibilities of x~.
        log_wN, _, _ = self._components(x_tilde, sigma)
        r = self._responsibilities(log_wN)
        A, Sigma_k = _posterior_gain(self.covs, sigma)
        A, Sigma_k = A.to(x_tilde.dtype), Sigma_k.to(x_tilde.dtype)
        m = self.means.to(x_tilde.dtype)
        mu_k = m + matvec(A, x_tilde[:, None, :] - m)
        mu = _sum_over_components(r[..., None] * mu_k)
        dev = mu_k - mu[:, None, :]
        Sigma = _sum_over_components(r[..., None, None] * (Sigma_k + _outer(dev, dev)))
        return mu, Sigma

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        L = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[k] + (L[k] @ z[..., None])[..., 0]

    def truth(self) -> dict:
        mean = self.weights @ self.means
        dev = self.means - mean
        cov = (self.weights[:, None, None] * (self.covs + _outer(dev, dev))).sum(0)
        return {
            "mean": mean,
            "cov": cov,
            "weights": self.weights,
            "means": self.means,
            "covs": self.covs,
            # per mode, the average variance per coordinate: tr(C_k) / d
            "within_mode_var": torch.diagonal(self.covs, dim1=-2, dim2=-1).mean(-1),
        }


def _gaussian2d() -> Gaussian:
    """Correlated 2-D Gaussian (correlation 0.6 / sqrt(1 * 0.5) ~ 0.85)."""
    return Gaussian(
        torch.tensor([0.5, -0.5], dtype=torch.float64),
        torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64),
    )


def _mog4() -> GaussianMixture:
    """Four modes at (+-1.5, +-1.5), weights 0.1, 0.2, 0.3, 0.4 (in the order (-,-), (-,+), (+,-),
    (+,+)), isotropic within-mode variance 0.04 (sd 0.2: modes 15 sd apart)."""
    means = torch.tensor([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]], dtype=torch.float64)
    covs = 0.04 * torch.eye(2, dtype=torch.float64).expand(4, 2, 2)
    return GaussianMixture(means, covs, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))


TARGETS: dict[str, Callable[[], Gaussian | GaussianMixture]] = {
    "gaussian2d": _gaussian2d,
    "mog4": _mog4,
}


def compare_to_truth(target, x: torch.Tensor, *, generator: torch.Generator, max_points: int = 4000) -> dict:
    """Sample statistics of x [N, d] against the target's exact facts, as a flat dict of floats.

    mean_error: |mean(x) - mean|; cov_error: |cov(x) - cov|_F / |cov|_F. Mixtures also:
    mode_weights (each sample assigned to the nearest mode mean), mode_weight_error (max abs),
    within_mode_var (pooled within-cluster variance per coordinate around each cluster's sample
    mean), within_mode_var_true (sum_k w_k tr(C_k)/d) and within_mode_var_error (abs).
    energy_distance: to as many exact samples (drawn from `generator`), using the
    first max_points samples of x (the pairwise cost grows as N^2).
    """
    x = x.reshape(len(x), -1).double()
    truth = target.truth()
    n, d = x.shape
    out: dict = {"n": n}
    out["mean_error"] = float(torch.linalg.vector_norm(x.mean(0) - truth["mean"]))
    cov = torch.cov(x.T).reshape(d, d)
    out["cov_error"] = float(torch.linalg.matrix_norm(cov - truth["cov"]) / torch.linalg.matrix_norm(truth["cov"]))
    if "weights" in truth:
        k = torch.cdist(x, truth["means"]).argmin(1)
        counts = torch.bincount(k, minlength=len(truth["weights"])).double()
        out["mode_weights"] = (counts / n).tolist()
        out["mode_weight_error"] = float((counts / n - truth["weights"]).abs().max())
        ss, dof = 0.0, 0
        for j in range(len(truth["weights"])):
            xj = x[k == j]
            if len(xj) >= 2:
                ss += float(((xj - xj.mean(0)) ** 2).sum())
                dof += len(xj) - 1
        out["within_mode_var"] = ss / (d * dof) if dof else float("nan")
        out["within_mode_var_true"] = float(truth["weights"] @ truth["within_mode_var"])
        out["within_mode_var_error"] = abs(out["within_mode_var"] - out["within_mode_var_true"])
    m = min(n, max_points)
    ref = target.sample(m, generator)
    out["energy_distance"] = energy_distance_unbiased(x[:m], ref)
    return out
