"""Gradient estimators against the exact ELBO gradient of a tiny SBN, enumerated over all latent states.

Model: 3 visible units, latent layers 2-2-2 (64 latent states), float64, weights ~ N(0, 1) so the
posterior is far from uniform. The exact gradient is ∇_φ Σ_z q(z|x) (log p(x, z) − log q(z|x)).
"""

import itertools

import numpy as np
import pytest
import torch

from raygen.errors import UserError
from raygen.gradvar.estimators import ESTIMATORS, estimate, inference_gradient, make_baselines
from raygen.gradvar.sbn import (SBN, bernoulli_entropy, bernoulli_log_prob, example_noise, generative_terms, infer,
                                split_noise)

DT = torch.float64
X = torch.tensor([[1.0, 0.0, 1.0]], dtype=DT)


def random_sbn(nonlinear: bool = False):
    model = SBN([2, 2, 2, 3], nonlinear=nonlinear, dtype=DT, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT))
    return model


@pytest.fixture(scope="module")
def tiny():
    return random_sbn()


def states(model):
    """Every latent configuration as per-layer tensors [N, H_l] (z_0 = x repeated)."""
    sizes = model.latent_sizes
    Z = torch.tensor(list(itertools.product([0.0, 1.0], repeat=sum(sizes))), dtype=DT)
    return [X.expand(len(Z), -1)] + list(torch.split(Z, sizes, dim=1))


def exact(model):
    """(q(z|x) for every state [N], exact ∇_φ ELBO flattened) by enumeration."""
    z = states(model)
    log_q = sum(bernoulli_log_prob(model.eta(l, z[l - 1]), z[l]).sum(-1) for l in range(1, len(z)))
    elbo = (log_q.exp() * (sum(generative_terms(model, z)) - log_q)).sum()
    grads = torch.autograd.grad(elbo, model.inference_parameters())
    return log_q.exp().detach(), torch.cat([g.reshape(-1) for g in grads])


def noise_for(model, z_row: list[torch.Tensor]) -> torch.Tensor:
    """Uniforms u with 1[u < σ(η)] = the given state, layer by layer."""
    us, parent = [], X
    for l, z in enumerate(z_row, start=1):
        q1 = torch.sigmoid(model.eta(l, parent)).detach()
        us.append(torch.where(z == 1, q1 / 2, (1 + q1) / 2))
        parent = z
    return torch.cat(us, dim=1)


def state_baselines(model, estimator):
    """Non-trivial baseline state: unbiasedness must not depend on the baselines being good."""
    b = make_baselines(model, estimator, hidden=5, generator=torch.Generator().manual_seed(0))
    b.c += torch.tensor([1.5, -2.0, 3.0], dtype=DT)
    if b.nets is not None:
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in b.nets.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT))
    return b


def per_state_gradients(model, estimator):
    """The estimate at every latent state [N, P] (defined for estimators that depend on z only)."""
    b = state_baselines(model, estimator)
    z = states(model)
    rows = [noise_for(model, [layer[i:i + 1] for layer in z[1:]]) for i in range(len(z[1]))]
    return torch.stack([inference_gradient(model, X, u, estimator, b) for u in rows])


@pytest.mark.parametrize("estimator", ["lr", "lr_baseline", "nvil", "leg", "leg_baseline"])
def test_expectation_over_all_states_is_the_exact_gradient(tiny, estimator):
    q, grad = exact(tiny)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-12)
    mean = (q[:, None] * per_state_gradients(tiny, estimator)).sum(0)
    assert grad.abs().max() > 0.1  # a non-trivial target
    torch.testing.assert_close(mean, grad, rtol=0, atol=1e-10)


BATCHES, BATCH = 25, 160  # 4,000 samples per estimator


def test_nonlinear_conditionals_keep_leg_exact_and_optimal_unbiased():
    """The flip / re-simulation code paths through MLP conditionals (the "nonlinear" model)."""
    model = random_sbn(nonlinear=True)
    q, grad = exact(model)
    mean = (q[:, None] * per_state_gradients(model, "leg")).sum(0)
    torch.testing.assert_close(mean, grad, rtol=0, atol=1e-10)
    assert torch.all(within_error(sampled(model, "optimal"), grad))


def sampled(model, estimator, *, batches: int = BATCHES, batch_size: int = BATCH, offset: int = 0,
            drop_entropy: bool = False):
    """Mini-batch estimates [batches, P], every example from its own seed. `drop_entropy` removes the
    optimal estimator's direct entropy gradient (a deliberately biased variant)."""
    b = state_baselines(model, estimator)
    out = []
    for m in range(batches):
        seeds = offset + np.arange(m * batch_size, (m + 1) * batch_size)
        u = example_noise(seeds, sum(model.latent_sizes), dtype=DT)
        x = X.expand(batch_size, -1)
        if not drop_entropy:
            out.append(inference_gradient(model, x, u, estimator, b))
            continue
        s = infer(model, x, split_noise(model, u))
        objective = estimate(model, x, u, estimator, b).objective
        objective = objective - sum(bernoulli_entropy(eta).sum() for eta in s.eta[1:]) / batch_size
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, model.inference_parameters())]))
    return torch.stack(out)


def within_error(g, grad):
    """Mean of the batch estimates within 4.5 standard errors of the exact gradient, per element
    (t with 24 degrees of freedom: a false alarm over 20 elements has probability ~3e-3)."""
    se = g.std(0) / len(g) ** 0.5
    return (g.mean(0) - grad).abs() <= 4.5 * se + 1e-12


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_sampled_mean_matches_exact_gradient_within_monte_carlo_error(tiny, estimator):
    _, grad = exact(tiny)
    assert torch.all(within_error(sampled(tiny, estimator), grad))


def test_sampled_check_detects_a_biased_estimator(tiny):
    """The check above has power: the optimal estimator without its direct entropy gradient (the −η
    term, ∇_φ H[q(z_l | z_{l-1})] at fixed z) is biased and fails it."""
    _, grad = exact(tiny)
    assert not torch.all(within_error(sampled(tiny, "optimal", drop_entropy=True), grad))


def test_lr_variance_enumerated_matches_sampled_and_optimal_is_lower(tiny):
    q, _ = exact(tiny)
    G = per_state_gradients(tiny, "lr")
    mean = (q[:, None] * G).sum(0)
    var = (q[:, None] * (G - mean) ** 2).sum(0)  # per-example variance, per element
    mu4 = (q[:, None] * (G - mean) ** 4).sum(0)
    # sampled: the variance of M batch means of B examples is σ²/B; its own sd follows from the
    # batch mean's fourth central moment (μ4 + 3(B − 1)σ⁴) / B³, also enumerated
    M, B = 400, 5
    g = sampled(tiny, "lr", batches=M, batch_size=B, offset=10**6)
    s2, var_b = g.var(0), var / B
    mu4_b = (mu4 + 3 * (B - 1) * var**2) / B**3
    se = ((mu4_b - var_b**2 * (M - 3) / (M - 1)) / M).clamp_min(0).sqrt()
    assert torch.all((s2 - var_b).abs() <= 4.5 * se + 1e-12), ((s2 - var_b) / se)
    assert float(s2.mean()) == pytest.approx(float(var_b.mean()), rel=0.2)
    optimal = sampled(tiny, "optimal", batches=M, batch_size=B, offset=10**6).var(0)
    assert float(optimal.mean()) < float(var_b.mean()) / 5


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_an_examples_estimate_depends_only_on_its_seed(tiny, estimator):
    b = state_baselines(tiny, estimator)
    seeds = [11, 22, 33]
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=DT)

    def grad(order):
        u = example_noise([seeds[i] for i in order], sum(tiny.latent_sizes), dtype=DT)
        return inference_gradient(tiny, x[order], u, estimator, b)

    singles = torch.stack([grad([i]) for i in range(3)])
    torch.testing.assert_close(grad([0, 1, 2]), singles.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad([2, 0, 1]), singles.mean(0), rtol=0, atol=1e-12)


def test_unknown_estimator_is_one_line(tiny):
    u = example_noise([0], sum(tiny.latent_sizes), dtype=DT)
    with pytest.raises(UserError, match="unknown gradient estimator 'reinforce'; valid estimators: lr, ") as err:
        estimate(tiny, X, u, "reinforce", make_baselines(tiny, "lr"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown gradient estimator"):
        make_baselines(tiny, "muprop")
