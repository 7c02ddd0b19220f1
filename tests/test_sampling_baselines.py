"""Langevin and annealed Langevin against closed forms."""

import pytest
import torch

from raygen.errors import UserError
from raygen.sampling import Gaussian, annealed_langevin, initial_state, langevin

F64 = torch.float64


class Flat:
    """score = 0: the chain is a pure random walk, x_T - x_0 ~ N(0, 2 sum_t alpha_t I)."""

    def score(self, x, sigma):
        return torch.zeros_like(x)


def increment_variance(sampler, sigmas, n=4000, **kwargs):
    seeds = list(range(n))
    x0 = initial_state(seeds, (2,))
    x, info = sampler(Flat(), x0, sigmas, seeds=seeds, **kwargs)
    return (x - x0).var(0), info


def test_langevin_step_budget_and_variance():
    var, info = increment_variance(langevin, [2.0, 1.0, 0.5], steps_per_level=2, step_size=0.05)
    assert info["score_evals"] == 6
    expected = 2 * 0.05 * 6  # len(sigmas) * steps_per_level steps at the last sigma
    assert ((var - expected).abs() < 5 * expected * (2 / 4000) ** 0.5).all()


def test_annealed_langevin_step_schedule():
    var, info = increment_variance(annealed_langevin, [2.0, 1.0, 0.5], steps_per_level=2, step_size=0.01)
    assert info["score_evals"] == 6
    expected = 2 * 2 * 0.01 * (16 + 4 + 1)  # alpha_i = eps sigma_i^2 / sigma_L^2, 2 steps each
    assert ((var - expected).abs() < 5 * expected * (2 / 4000) ** 0.5).all()


@pytest.mark.parametrize("sampler", [langevin, annealed_langevin])
def test_ula_stationary_variance_closed_form(sampler):
    """ULA on N(m, v) (per coordinate) has stationary variance v / (1 - alpha / (2 v)); here v is the
    noisy variance S_ii + sigma^2: Langevin samples q~, not the data."""
    S, sigma, alpha = torch.tensor([1.0, 0.3], dtype=F64), 0.5, 0.2
    target = Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.diag(S))
    seeds = list(range(3000))
    x, _ = sampler(target, initial_state(seeds, (2,)), [sigma], steps_per_level=80, step_size=alpha, seeds=seeds)
    v = S + sigma**2
    v_ula = v / (1 - alpha / (2 * v))
    assert ((x.var(0) - v_ula).abs() < 5 * v_ula * (2 / 3000) ** 0.5).all(), (x.var(0), v_ula)
    assert ((x.mean(0) - target.mean).abs() < 5 * (v_ula / 3000) ** 0.5).all()
    assert ((x.var(0) - v).abs() > 5 * v * (2 / 3000) ** 0.5).any()  # the step-size bias is visible


@pytest.mark.parametrize("step_size", [0.0, -1.0, True])
def test_bad_step_size_is_user_error(step_size):
    with pytest.raises(UserError, match="step_size"):
        langevin(Flat(), torch.zeros(2, 2), [0.5], step_size=step_size, seeds=[0, 1])
