"""MMDGS against exact answers on Gaussian data with the exact noisy score."""

import math

import pytest
import torch

from raygen.errors import UserError
from raygen.models.energy import EnergyModel
from raygen.sampling import Gaussian, PerSampleNoise, TARGETS, initial_state, mmdgs, tweedie
from raygen.sampling.mmdgs import diag_hessian_estimate

F64 = torch.float64


def gaussian(cov):
    return Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor(cov, dtype=F64))


def assert_moments(x, mean, cov, n_se=5.0):
    """Sample mean and covariance of x equal (mean, cov) within n_se Monte-Carlo standard errors."""
    n = len(x)
    var = torch.diagonal(cov)
    assert ((x.mean(0) - mean).abs() <= n_se * torch.sqrt(var / n)).all(), (x.mean(0), mean)
    se_cov = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)  # Gaussian sample-cov SE
    assert ((torch.cov(x.T) - cov).abs() <= n_se * se_cov).all(), (torch.cov(x.T), cov)


def run_chain(target, covariance, sigma=0.5, n=3000, steps=30):
    seeds = list(range(n))
    x0 = initial_state(seeds, (2,), scale=1.0)
    return mmdgs(target, x0, [sigma], steps_per_level=steps, covariance=covariance, seeds=seeds)


STATIONARY_CASES = {
    # (data covariance, covariance variant): cases where the variant's Sigma is exact
    "full-correlated": ([[1.0, 0.6], [0.6, 0.5]], "full"),
    "diag-diagonal": ([[1.0, 0.0], [0.0, 0.3]], "diag"),
    "iso-isotropic": ([[0.6, 0.0], [0.0, 0.6]], "iso"),
}


@pytest.mark.parametrize("case", STATIONARY_CASES)
def test_chain_stationary_distribution_is_the_data(case):
    cov, covariance = STATIONARY_CASES[case]
    target = gaussian(cov)
    x, info = run_chain(target, covariance)
    assert info["score_evals"] == 30 and info["psd_repairs"] == 0
    assert_moments(x, target.mean, target.cov)


def test_full_chain_fails_the_same_check_on_the_wrong_variant():
    """The check above can fail: diag ignores the 0.85 correlation, iso the anisotropy."""
    target = gaussian([[1.0, 0.6], [0.6, 0.5]])
    for covariance in ("diag", "iso"):
        x, _ = run_chain(target, covariance)
        with pytest.raises(AssertionError):
            assert_moments(x, target.mean, target.cov)


def test_mean_only_chain_collapses_to_closed_form_variance():
    """x' = E[x|x~] on N(m, cI): stationary variance a^2 sigma^2 / (1 - a^2), a = c / (c + sigma^2)."""
    c, sigma = 0.04, 0.2
    target = Gaussian(torch.zeros(2, dtype=F64), c * torch.eye(2, dtype=F64))
    seeds = list(range(4000))
    x, info = tweedie(target, initial_state(seeds, (2,)), [sigma], steps_per_level=30, seeds=seeds)
    a = c / (c + sigma**2)
    v = a**2 * sigma**2 / (1 - a**2)
    assert v == pytest.approx(0.04 / 3)
    assert_moments(x, target.mean, v * torch.eye(2, dtype=F64))
    assert info == {"score_evals": 30, "hvp_evals": 0, "psd_repairs": 0, "clipped_variances": 0}


def test_one_step_tweedie_denoising_has_posterior_mean_covariance():
    """x ~ p, x~ = x + sigma eps, output E[x|x~]: covariance S - Sigma_post = S (S + sigma^2 I)^-1 S."""
    target, sigma, n = gaussian([[1.0, 0.6], [0.6, 0.5]]), 0.7, 4000
    x_data = target.sample(n, torch.Generator().manual_seed(0))
    x, _ = tweedie(target, x_data, sigma, seeds=list(range(n)))
    S = target.cov
    assert_moments(x, target.mean, S @ torch.linalg.solve(S + sigma**2 * torch.eye(2, dtype=F64), S))


class ScoreOnly:
    def __init__(self, target):
        self.score = target.score


class EnergyAndScore(ScoreOnly):
    def __init__(self, target):
        super().__init__(target)
        self.energy = target.energy


@pytest.mark.parametrize("wrap", [lambda t: t, ScoreOnly, EnergyAndScore])
def test_diag_estimator_is_unbiased_and_exact_on_diagonal_hessians(wrap):
    sigma, n = 0.5, 4000
    correlated = gaussian([[1.0, 0.6], [0.6, 0.5]])
    x = torch.tensor([[0.3, 0.2]], dtype=F64).expand(n, 2)
    est = diag_hessian_estimate(wrap(correlated), x, sigma, 1, PerSampleNoise(range(n)))
    H = correlated.hessian(x[:1], sigma)[0]
    se = torch.sqrt((H**2).sum(1) - torch.diagonal(H) ** 2) / math.sqrt(n)  # Var v_i (Hv)_i = sum_{j!=i} H_ij^2
    assert ((est.mean(0) - torch.diagonal(H)).abs() <= 5 * se).all()
    assert est.std(0).min() > 0.5 * se.min() * math.sqrt(n)  # each single-probe estimate is noisy
    diagonal = gaussian([[1.0, 0.0], [0.0, 0.3]])
    est = diag_hessian_estimate(wrap(diagonal), x[:5], sigma, 1, PerSampleNoise(range(5)))
    torch.testing.assert_close(est, torch.diagonal(diagonal.hessian(x[:5], sigma), dim1=1, dim2=2), rtol=0, atol=1e-14)


class SharpQuadratic:
    """log q~ = -x^T P x / 2 with P = diag(100, 1): sigma^2 + sigma^4 * (-100) < 0 at sigma = 0.5 (an
    impossible noisy density, as a badly trained model may produce)."""

    P = torch.tensor([100.0, 1.0], dtype=F64)

    def energy(self, x, sigma):
        return 0.5 * (self.P * x * x).sum(1)

    def score(self, x, sigma):
        return -self.P * x

    def hessian(self, x, sigma):
        return torch.diag(-self.P).expand(len(x), 2, 2)


def test_non_psd_covariance_is_repaired_and_counted():
    seeds = list(range(50))
    x0 = initial_state(seeds, (2,))
    x, info = mmdgs(SharpQuadratic(), x0, [0.5], steps_per_level=3, covariance="full", seeds=seeds)
    assert info["psd_repairs"] == 50 * 3 and torch.isfinite(x).all()
    x, info = mmdgs(SharpQuadratic(), x0, [0.5], steps_per_level=3, covariance="diag", seeds=seeds)
    assert info["clipped_variances"] == 50 * 3  # the first coordinate of every sample, every step
    _, info = mmdgs(TARGETS["gaussian2d"](), x0, [0.5], steps_per_level=3, covariance="full", seeds=seeds)
    assert info["psd_repairs"] == 0


def gaussian_energy_net(target):
    """The gaussian target's energy written with plain torch ops, as a network would be."""

    class Net(torch.nn.Module):
        def forward(self, x, sigma):
            C = target.cov + sigma**2 * torch.eye(2, dtype=F64)
            diff = x.reshape(len(x), 2) - target.mean
            return 0.5 * (diff * torch.linalg.solve(C, diff.T).T).sum(1)

    return Net()


@pytest.mark.parametrize("covariance", ["full", "diag", "iso"])
def test_autograd_models_match_the_closed_form_target(covariance):
    """EnergyModel (hessian/hvp by double backward) and an energy-only object (sampler's own
    autograd route) give the closed-form target's chain to rounding, same seeds."""
    target = gaussian([[1.0, 0.6], [0.6, 0.5]])
    seeds = list(range(20))
    x0 = initial_state(seeds, (2,))
    kw = dict(steps_per_level=2, covariance=covariance, probes=3, seeds=seeds)
    ref, ref_info = mmdgs(target, x0, [1.0, 0.4], **kw)
    model = EnergyModel(gaussian_energy_net(target))
    for m in (model, EnergyAndScore(model)):
        x, info = mmdgs(m, x0, [1.0, 0.4], **kw)
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)
        assert info == ref_info


def test_image_shaped_states_and_float32():
    model = EnergyModel(gaussian_energy_net(gaussian([[1.0, 0.6], [0.6, 0.5]])))
    seeds = list(range(8))
    x0 = initial_state(seeds, (1, 2))
    for covariance in ("full", "diag", "iso"):
        x64, _ = mmdgs(model, x0, [1.0, 0.4], steps_per_level=2, covariance=covariance, seeds=seeds)
        assert x64.shape == (8, 1, 2)
    target = TARGETS["mog4"]()
    x0 = initial_state(seeds, (2,))
    for covariance in ("full", "diag", "iso", "none"):
        kw = dict(steps_per_level=2, covariance=covariance, seeds=seeds)
        x64, _ = mmdgs(target, x0, [1.0, 0.4], **kw)
        x32, _ = mmdgs(target, x0.float(), [1.0, 0.4], **kw)
        assert x32.dtype == torch.float32
        torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigmas=[0.2, 0.5]), "non-increasing"),
        (dict(sigmas=[]), "empty"),
        (dict(sigmas=[-1.0]), "> 0"),
        (dict(covariance="dense"), "covariance must be one of"),
        (dict(probes=0), "probes"),
        (dict(steps_per_level=0), "steps_per_level"),
        (dict(seeds=[1, 2]), "one seed per sample"),
        (dict(model=ScoreOnly(TARGETS["mog4"]()), covariance="full"), "EnergyModel"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, match):
    args = dict(model=TARGETS["mog4"](), x_init=torch.zeros(3, 2, dtype=F64), sigmas=[0.5], seeds=[0, 1, 2])
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        mmdgs(args.pop("model"), args.pop("x_init"), args.pop("sigmas"), **args)
