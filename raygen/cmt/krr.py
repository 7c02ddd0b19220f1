"""RBF kernel ridge regression with the ridge chosen by closed-form leave-one-out CV.

Model: ŷ(x) = Σ_j c_j k(x, x_j), c = (K + αI)⁻¹ y, k(x, x') = exp(−γ‖x − x'‖²), no intercept (the
data are standardised). Bandwidth by the median heuristic γ = 1 / (2·median²) over the pairwise
distances of the training inputs (Teshima et al., ICML 2020, App.; held fixed while α is chosen).

Leave-one-out in closed form: with the hat matrix S = K(K + αI)⁻¹ the prediction at x_i of the model
refitted without point i satisfies y_i − ŷ₋ᵢ(x_i) = (y_i − ŷ_i) / (1 − S_ii) (the standard identity for
linear smoothers of the ridge form). With K = U diag(λ) Uᵀ once, every α costs O(N·L):
S_ii = Σ_k U_ik² λ_k / (λ_k + α). The LOO score may be restricted to the first L rows (the original
target points, when the rest are augmented points), as in the paper's "partial" LOOCV.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial.distance import cdist, pdist

ALPHAS = tuple(2.0**k for k in range(-10, 11))


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


def loo_residuals(eigvals: np.ndarray, eigvecs: np.ndarray, y: np.ndarray, alpha: float, rows: int) -> np.ndarray:
    """y_i − ŷ₋ᵢ(x_i) for i < rows, from K = eigvecs·diag(eigvals)·eigvecsᵀ."""
    shrink = eigvals / (eigvals + alpha)
    u = eigvecs[:rows]
    fitted = u @ (shrink * (eigvecs.T @ y))
    leverage = (u**2) @ shrink
    return (y[:rows] - fitted) / (1.0 - leverage)


def fit_krr(x: np.ndarray, y: np.ndarray, *, scored_rows: int | None = None, alphas=ALPHAS,
            gamma: float | None = None) -> KRR:
    """Fit on all rows; choose α ∈ alphas by the LOO MSE over the first `scored_rows` rows (all by default)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rows = len(x) if scored_rows is None else scored_rows
    gamma = median_gamma(x) if gamma is None else gamma
    eigvals, eigvecs = np.linalg.eigh(rbf(x, x, gamma))
    eigvals = np.clip(eigvals, 0.0, None)  # K is PSD; round-off can make tiny eigenvalues negative
    scores = [float(np.mean(loo_residuals(eigvals, eigvecs, y, a, rows) ** 2)) for a in alphas]
    best = int(np.argmin(scores))
    alpha = alphas[best]
    coef = eigvecs @ ((eigvecs.T @ y) / (eigvals + alpha))
    return KRR(x=x, coef=coef, gamma=gamma, alpha=alpha, loocv_mse=scores[best])
