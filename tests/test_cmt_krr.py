"""raygen.cmt.krr: closed-form LOOCV against brute-force refits; the fit against a dense solve."""

import numpy as np
from scipy.spatial.distance import pdist

from raygen.cmt.krr import ALPHAS, fit_krr, loo_residuals, median_gamma, rbf


def _brute_loo(x, y, gamma, alpha, rows):
    out = []
    for i in range(rows):
        keep = np.arange(len(x)) != i
        coef = np.linalg.solve(rbf(x[keep], x[keep], gamma) + alpha * np.eye(keep.sum()), y[keep])
        out.append(y[i] - rbf(x[i : i + 1], x[keep], gamma)[0] @ coef)
    return np.array(out)


def test_closed_form_loo_equals_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3))
    y = np.sin(x[:, 0]) + 0.1 * rng.standard_normal(30)
    gamma = median_gamma(x)
    eigvals, eigvecs = np.linalg.eigh(rbf(x, x, gamma))
    for alpha in (2.0**-10, 2.0**-3, 1.0, 2.0**6):
        for rows in (30, 6):  # all rows, and the "partial" LOOCV on the first rows only
            fast = loo_residuals(eigvals, eigvecs, y, alpha, rows)
            np.testing.assert_allclose(fast, _brute_loo(x, y, gamma, alpha, rows), rtol=0, atol=1e-8)


def test_fit_picks_the_brute_force_best_alpha_and_predicts_like_a_dense_solve():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((25, 2))
    y = x[:, 0] * x[:, 1] + 0.2 * rng.standard_normal(25)
    model = fit_krr(x, y, scored_rows=8)
    gamma = median_gamma(x)
    brute = [np.mean(_brute_loo(x, y, gamma, a, 8) ** 2) for a in ALPHAS]
    assert model.alpha == ALPHAS[int(np.argmin(brute))]
    assert abs(model.loocv_mse - min(brute)) < 1e-10
    x_new = rng.standard_normal((7, 2))
    dense = rbf(x_new, x, gamma) @ np.linalg.solve(rbf(x, x, gamma) + model.alpha * np.eye(25), y)
    np.testing.assert_allclose(model.predict(x_new), dense, atol=1e-8)


def test_median_heuristic():
    x = np.random.default_rng(2).standard_normal((11, 4))
    d = sorted(np.linalg.norm(x[i] - x[j]) for i in range(11) for j in range(i + 1, 11))
    assert abs(median_gamma(x) - 1 / (2 * np.median(d) ** 2)) < 1e-12
    assert np.allclose(sorted(pdist(x)), d)
