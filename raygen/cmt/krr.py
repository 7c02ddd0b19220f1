"""RBF kernel ridge regression with the ridge chosen by closed-form leave-one-out CV.

Model: ŷ(x) = Σ_j θ_j k(x, x_j), k(x, x') = exp(−γ‖x − x'‖²), no intercept (the data are
standardised). Two forms of θ (`FORMS`):

- `reference` (default): θ = (KᵀK + αI)⁻¹Kᵀy, ridge regression on the kernel columns as features —
  the form of Teshima et al.'s code (ICML 2020), with its α grid. At the same α it regularises far
  more than the dual form (shrinkage λ²/(λ² + α) instead of λ/(λ + α) per eigenvalue λ of K, and K's
  eigenvalues are mostly < 1), so at the grid's small α it does not interpolate noisy augmented points.
- `dual`: θ = (K + αI)⁻¹y, the textbook kernel ridge form.

Bandwidth by the median heuristic γ = 1 / (2·median²) over the pairwise distances of the training
inputs (held fixed while α is chosen).

Leave-one-out in closed form: both forms are linear smoothers ŷ = S y, with K = U diag(λ) Uᵀ once
S = U diag(g) Uᵀ, g = λ/(λ + α) (dual) or λ²/(λ² + α) (reference). For the dual form the model
refitted without point i (its kernel column dropped too) satisfies y_i − ŷ₋ᵢ(x_i) = (y_i − ŷ_i) / (1 − S_ii);
for the reference form the same identity is exact for ridge regression on the fixed features K[i, :]
with row i left out (the kernel columns, point i's included, are kept), which is what the reference
computes. Every α costs O(N·L). The LOO score may be restricted to the first L rows (the original
target points, when the rest are augmented points): the paper's "partial" LOOCV.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from scipy.spatial.distance import cdist, pdist

ALPHAS = tuple(2.0**k for k in range(-10, 11))
Form = Literal["reference", "dual"]
FORMS: tuple[str, ...] = ("reference", "dual")


def median_gamma(x: np.ndarray) -> float:
    """γ = 1 / (2·median²) of the pairwise Euclidean distances of the rows of x."""
    d = pdist(x)
    d = d[d > 0]
    return 1.0 / (2.0 * float(np.median(d)) ** 2) if d.size else 1.0


def rbf(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * cdist(a, b, "sqeuclidean"))


@dataclasses.dataclass(frozen=True)
class KRR:
    x: np.ndarray
    coef: np.ndarray
    gamma: float
    alpha: float
    loocv_mse: float  # mean squared LOO residual over the scored rows, at the chosen alpha

    def predict(self, x: np.ndarray) -> np.ndarray:
        return rbf(x, self.x, self.gamma) @ self.coef


def _shrink(eigvals: np.ndarray, alpha: float, form: Form) -> np.ndarray:
    """Eigenvalues of the smoother S = Kθ/y per eigen-direction of K."""
    if form == "dual":
        return eigvals / (eigvals + alpha)
    if form == "reference":
        return eigvals**2 / (eigvals**2 + alpha)
    raise ValueError(f"unknown KRR form {form!r}; valid: {', '.join(FORMS)}")


def loo_residuals(eigvals: np.ndarray, eigvecs: np.ndarray, y: np.ndarray, alpha: float, rows: int,
                  form: Form = "reference") -> np.ndarray:
    """y_i − ŷ₋ᵢ(x_i) for i < rows, from K = eigvecs·diag(eigvals)·eigvecsᵀ."""
    shrink = _shrink(eigvals, alpha, form)
    u = eigvecs[:rows]
    fitted = u @ (shrink * (eigvecs.T @ y))
    leverage = (u**2) @ shrink
    return (y[:rows] - fitted) / (1.0 - leverage)


def fit_krr(x: np.ndarray, y: np.ndarray, *, scored_rows: int | None = None, alphas=ALPHAS,
            gamma: float | None = None, form: Form = "reference") -> KRR:
    """Fit on all rows; choose α ∈ alphas by the LOO MSE over the first `scored_rows` rows (all by default)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rows = len(x) if scored_rows is None else scored_rows
    gamma = median_gamma(x) if gamma is None else gamma
    eigvals, eigvecs = np.linalg.eigh(rbf(x, x, gamma))
    eigvals = np.clip(eigvals, 0.0, None)  # K is PSD; round-off can make tiny eigenvalues negative
    scores = [float(np.mean(loo_residuals(eigvals, eigvecs, y, a, rows, form) ** 2)) for a in alphas]
    best = int(np.argmin(scores))
    alpha = alphas[best]
    # θ = U·diag(1/(λ + α))·Uᵀy (dual) or U·diag(λ/(λ² + α))·Uᵀy (reference)
    scale = 1.0 / (eigvals + alpha) if form == "dual" else eigvals / (eigvals**2 + alpha)
    coef = eigvecs @ (scale * (eigvecs.T @ y))
    return KRR(x=x, coef=coef, gamma=gamma, alpha=alpha, loocv_mse=scores[best])
