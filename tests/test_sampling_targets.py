"""Analytic targets against independent routes: torch.distributions densities, autograd, finite
differences, numerical integration, and the Gaussian closed forms."""

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from raygen.metrics.distances import energy_distance_unbiased
from raygen.sampling.targets import TARGETS, Gaussian, GaussianMixture, compare_to_truth

F64 = torch.float64
SIGMAS = [0.0, 0.3, 1.2]


def anisotropic_mixture() -> GaussianMixture:
    """Three overlapping, correlated, unequal components: responsibilities are far from 0/1."""
    means = torch.tensor([[0.0, 0.0], [1.0, 0.5], [-0.5, 1.0]], dtype=F64)
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.5, 0.0], [0.0, 0.1]]], dtype=F64)
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=F64))


TARGET_CASES = {"gaussian2d": TARGETS["gaussian2d"], "mog4": TARGETS["mog4"], "aniso3": anisotropic_mixture}


def noisy_distribution(target, sigma):
    """torch.distributions version of q~ = p * N(0, sigma^2 I), written independently."""
    eye = torch.eye(target.dim, dtype=F64)
    if isinstance(target, Gaussian):
        return MultivariateNormal(target.mean, target.cov + sigma**2 * eye)
    return MixtureSameFamily(
        Categorical(probs=target.weights), MultivariateNormal(target.means, target.covs + sigma**2 * eye)
    )


def points(n=7, seed=0):
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("name", TARGET_CASES)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_energy_score_hessian_match_torch_distributions_by_autograd(name, sigma):
    target = TARGET_CASES[name]()
    q = noisy_distribution(target, sigma)
    x = points()
    torch.testing.assert_close(target.energy(x, sigma), -q.log_prob(x), rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(q.log_prob(xg).sum(), xg)
    torch.testing.assert_close(target.score(x, sigma), score, rtol=1e-10, atol=1e-10)
    for i in range(len(x)):
        H = torch.autograd.functional.hessian(lambda v: q.log_prob(v), x[i])
        torch.testing.assert_close(target.hessian(x[i : i + 1], sigma)[0], H, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", TARGET_CASES)
def test_score_and_hessian_match_finite_differences(name):
    target, sigma, h = TARGET_CASES[name](), 0.4, 1e-5
    x = points(seed=1)
    for j in range(2):
        e = torch.zeros(2, dtype=F64)
        e[j] = h
        fd_score = -(target.energy(x + e, sigma) - target.energy(x - e, sigma)) / (2 * h)
        torch.testing.assert_close(target.score(x, sigma)[:, j], fd_score, rtol=1e-7, atol=1e-7)
        fd_hess_col = (target.score(x + e, sigma) - target.score(x - e, sigma)) / (2 * h)
        torch.testing.assert_close(target.hessian(x, sigma)[:, :, j], fd_hess_col, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", TARGET_CASES)
@pytest.mark.parametrize("sigma", [0.2, 0.7])
def test_posterior_moments_satisfy_tweedie_identities(name, sigma):
    """Posterior moments (from the per-component Gaussian posteriors) vs first/second-order Tweedie
    (from the noisy score and Hessian): two independent closed forms."""
    target = TARGET_CASES[name]()
    x_tilde = points(seed=2)
    mu, Sigma = target.posterior_moments(x_tilde, sigma)
    torch.testing.assert_close(mu, x_tilde + sigma**2 * target.score(x_tilde, sigma), rtol=0, atol=1e-10)
    Sigma_tweedie = sigma**2 * torch.eye(2, dtype=F64) + sigma**4 * target.hessian(x_tilde, sigma)
    torch.testing.assert_close(Sigma, Sigma_tweedie, rtol=0, atol=1e-10)


def test_gaussian_posterior_covariance_closed_form():
    target, sigma = TARGETS["gaussian2d"](), 0.5
    S = target.cov
    expected = sigma**2 * torch.linalg.solve(S + sigma**2 * torch.eye(2, dtype=F64), S)
    _, Sigma = target.posterior_moments(points(3), sigma)
    for row in Sigma:
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-13)


def test_mixture_posterior_moments_match_grid_integration():
    """E[x|x~], Cov[x|x~] by brute-force integration of p(x) N(x~; x, sigma^2 I) on a fine grid."""
    target, sigma = anisotropic_mixture(), 0.6
    grid_1d = torch.linspace(-6, 6, 601, dtype=F64)
    gx, gy = torch.meshgrid(grid_1d, grid_1d, indexing="ij")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)
    log_prior = noisy_distribution(target, 0.0).log_prob(grid)
    x_tilde = torch.tensor([[0.3, -0.2], [1.5, 1.0], [-1.0, 0.8]], dtype=F64)
    mu, Sigma = target.posterior_moments(x_tilde, sigma)
    for i, xt in enumerate(x_tilde):
        logw = log_prior - ((grid - xt) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        m = w @ grid
        C = (w[:, None] * (grid - m)).T @ (grid - m)
        torch.testing.assert_close(mu[i], m, rtol=0, atol=1e-9)
        torch.testing.assert_close(Sigma[i], C, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", TARGET_CASES)
def test_sample_matches_truth_within_monte_carlo_error(name):
    target, n = TARGET_CASES[name](), 20000
    x = target.sample(n, torch.Generator().manual_seed(3))
    truth = target.truth()
    cov = truth["cov"]
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - truth["mean"]).abs() < 5 * se_mean).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0, atol=5 * float(cov.abs().max()) * math.sqrt(2 / n))
    if "weights" in truth:
        w = truth["weights"]
        freq = torch.bincount(torch.cdist(x, truth["means"]).argmin(1), minlength=len(w)).double() / n
        if name == "mog4":  # well separated: nearest-mean assignment recovers the component
            assert ((freq - w).abs() < 5 * torch.sqrt(w * (1 - w) / n)).all()


def test_mog4_truth():
    truth = TARGETS["mog4"]().truth()
    torch.testing.assert_close(truth["weights"], torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    torch.testing.assert_close(truth["within_mode_var"], torch.full((4,), 0.04, dtype=F64))
    # mean = 1.5 * (w3 + w4 - w1 - w2, w2 + w4 - w1 - w3)
    torch.testing.assert_close(truth["mean"], torch.tensor([0.6, 0.3], dtype=F64))


def test_float32_follows_input_dtype():
    target = TARGETS["mog4"]()
    x = points().float()
    for out in (target.energy(x, 0.2), target.score(x, 0.2), target.hessian(x, 0.2)):
        assert out.dtype == torch.float32
    torch.testing.assert_close(target.score(x, 0.2), target.score(x.double(), 0.2).float(), rtol=1e-4, atol=1e-4)


def test_energy_distance_on_hand_computed_sets():
    # x = {0, 1}, y = {3} on a line: E|X-Y| = 2.5, E|X-X'| (i != j) = 1, E|Y-Y'| over {3, 5} = 2
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0], [5.0]])
    # E|X-Y| = (3 + 5 + 2 + 4) / 4 = 3.5 -> 2 * 3.5 - 1 - 2 = 4
    assert energy_distance_unbiased(x, y) == pytest.approx(4.0)


def test_compare_to_truth_separates_good_and_collapsed_samples():
    target = TARGETS["mog4"]()
    exact = target.sample(4000, torch.Generator().manual_seed(5))
    good = compare_to_truth(target, exact, generator=torch.Generator().manual_seed(6), max_points=1500)
    assert good["mode_weight_error"] < 0.03
    assert good["within_mode_var_error"] < 0.004
    assert abs(good["energy_distance"]) < 0.02
    assert good["mean_error"] < 0.15 and good["cov_error"] < 0.1  # ~4 standard errors at n = 4000
    # shrink every sample halfway towards its mode mean: variance / 4, weights unchanged
    means = target.truth()["means"]
    nearest = means[torch.cdist(exact, means).argmin(1)]
    shrunk = compare_to_truth(target, nearest + 0.5 * (exact - nearest), generator=torch.Generator().manual_seed(6), max_points=10)
    assert shrunk["within_mode_var"] == pytest.approx(good["within_mode_var"] / 4, rel=1e-9)
    assert shrunk["mode_weights"] == good["mode_weights"]
    collapsed = compare_to_truth(target, exact[torch.cdist(exact, means).argmin(1) == 3], generator=torch.Generator().manual_seed(6), max_points=1500)
    assert collapsed["mode_weight_error"] == pytest.approx(0.6)
    assert collapsed["energy_distance"] > 0.5
