"""raygen.cmt.krr: closed-form LOOCV against brute-force refits; the fit against dense solves, in both forms."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from raygen.cmt.krr import ALPHAS, fit_krr, loo_residuals, median_gamma, rbf


def _brute_loo_dual(x, y, gamma, alpha, rows):
    """Refit (K + αI)⁻¹y without point i (its kernel column goes too) and predict it."""
    out = []
    for i in range(rows):
        keep = np.arange(len(x)) != i
        coef = np.linalg.solve(rbf(x[keep], x[keep], gamma) + alpha * np.eye(keep.sum()), y[keep])
        out.append(y[i] - rbf(x[i : i + 1], x[keep], gamma)[0] @ coef)
    return np.array(out)


def _brute_loo_reference(x, y, gamma, alpha, rows):
    """Ridge on the kernel columns (all kept) with row i left out: θ = (K₋ᵢᵀK₋ᵢ + αI)⁻¹K₋ᵢᵀy₋ᵢ, predict row i."""
    K = rbf(x, x, gamma)
    out = []
    for i in range(rows):
        keep = np.arange(len(x)) != i
        theta = np.linalg.solve(K[keep].T @ K[keep] + alpha * np.eye(len(x)), K[keep].T @ y[keep])
        out.append(y[i] - K[i] @ theta)
    return np.array(out)


BRUTE = {"dual": _brute_loo_dual, "reference": _brute_loo_reference}


@pytest.mark.parametrize("form", ["reference", "dual"])
def test_closed_form_loo_equals_brute_force(form):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3))
    y = np.sin(x[:, 0]) + 0.1 * rng.standard_normal(30)
    gamma = median_gamma(x)
    eigvals, eigvecs = np.linalg.eigh(rbf(x, x, gamma))
    for alpha in (2.0**-10, 2.0**-3, 1.0, 2.0**6):
        for rows in (30, 6):  # all rows, and the "partial" LOOCV on the first rows only
            fast = loo_residuals(eigvals, eigvecs, y, alpha, rows, form)
            np.testing.assert_allclose(fast, BRUTE[form](x, y, gamma, alpha, rows), rtol=0, atol=1e-7)


def _dense_coef(x, y, gamma, alpha, form):
    K = rbf(x, x, gamma)
    if form == "dual":
        return np.linalg.solve(K + alpha * np.eye(len(x)), y)
    # the normal equations of min ‖y − Kθ‖² + α‖θ‖², solved as the stacked least-squares problem
    A = np.vstack([K, np.sqrt(alpha) * np.eye(len(x))])
    return np.linalg.lstsq(A, np.concatenate([y, np.zeros(len(x))]), rcond=None)[0]


@pytest.mark.parametrize("form", ["reference", "dual"])
def test_fit_picks_the_brute_force_best_alpha_and_predicts_like_a_dense_solve(form):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((25, 2))
    y = x[:, 0] * x[:, 1] + 0.2 * rng.standard_normal(25)
    model = fit_krr(x, y, scored_rows=8, form=form)
    gamma = median_gamma(x)
    brute = [np.mean(BRUTE[form](x, y, gamma, a, 8) ** 2) for a in ALPHAS]
    assert model.alpha == ALPHAS[int(np.argmin(brute))]
    assert abs(model.loocv_mse - min(brute)) < 1e-10
    x_new = rng.standard_normal((7, 2))
    dense = rbf(x_new, x, gamma) @ _dense_coef(x, y, gamma, model.alpha, form)
    np.testing.assert_allclose(model.predict(x_new), dense, atol=1e-7)


def test_reference_form_is_the_default_and_regularises_more_at_the_same_alpha():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 3))
    y = rng.standard_normal(40)  # pure noise: the less-regularised fit follows it more closely
    ref = fit_krr(x, y, alphas=(2.0**-10,))
    dual = fit_krr(x, y, alphas=(2.0**-10,), form="dual")
    assert np.array_equal(ref.coef, fit_krr(x, y, alphas=(2.0**-10,), form="reference").coef)
    fitted = lambda m: np.mean((m.predict(x) - y) ** 2)
    assert fitted(ref) > 2 * fitted(dual)  # measured 0.41 vs 0.16
    assert np.linalg.norm(ref.coef) < np.linalg.norm(dual.coef) / 10
    with pytest.raises(ValueError, match="unknown KRR form"):
        fit_krr(x, y, form="primal")


def test_median_heuristic():
    x = np.random.default_rng(2).standard_normal((11, 4))
    d = sorted(np.linalg.norm(x[i] - x[j]) for i in range(11) for j in range(i + 1, 11))
    assert abs(median_gamma(x) - 1 / (2 * np.median(d) ** 2)) < 1e-12
    assert np.allclose(sorted(pdist(x)), d)
