"""raygen.cmt.methods: FastICA recovers a linear mixing; the oracle's augmented KRR; baselines' bookkeeping;
the nested leave-one-out score against explicit loops."""

import itertools

import numpy as np
import pytest

from raygen.cmt.augment import SupportFilter
from raygen.cmt.datasets import split_target, synthetic_panel
from raygen.cmt.krr import fit_krr
from raygen.cmt.methods import Training, fit_fastica, run_method
from raygen.errors import UserError

rng = np.random.default_rng


def test_fastica_recovers_a_linear_mixing_up_to_permutation_and_scale():
    r = rng(0)
    s = np.column_stack([r.laplace(size=3000), r.uniform(-1, 1, 3000), r.exponential(size=3000) - 1])
    mixing = np.array([[1.0, 0.6, -0.4], [0.3, 1.0, 0.8], [-0.7, 0.2, 1.0]])
    z = s @ mixing.T + np.array([2.0, -1.0, 0.5])
    h, h_inv = fit_fastica(z, rng(0))
    s_hat = h(z)
    corr = np.abs(np.corrcoef(s_hat.T, s.T)[:3, 3:])
    match = corr.argmax(axis=1)
    assert sorted(match) == [0, 1, 2]  # a permutation
    assert corr.max(axis=1).min() > 0.99
    np.testing.assert_allclose(h_inv(s_hat), z, atol=1e-8)


@pytest.fixture(scope="module")
def synthetic_split():
    panel = synthetic_panel(rng(0), n_sources=4, source_size=50, target_size=100)
    return panel, split_target(panel, "target", 5, rng(5))


def _sq_err(model, z):
    return float((model.predict(z[None, :-1])[0] - z[-1]) ** 2)


@pytest.mark.parametrize("form", ["reference", "dual"])
def test_baselines_are_plain_krr_fits_and_their_nested_loo_is_an_explicit_loop(synthetic_split, form):
    _, split = synthetic_split
    training = Training(krr_form=form)
    z = split.z_train
    (target,) = run_method("target_only", split, training=training, rng=rng(0))
    model = fit_krr(z[:, :-1], z[:, -1], form=form)
    assert target["loocv_mse"] == model.loocv_mse
    assert target["test_mse"] == pytest.approx(np.mean((model.predict(split.z_test[:, :-1]) - split.z_test[:, -1]) ** 2))
    loop = []
    for i in range(len(z)):
        rest = np.delete(z, i, axis=0)
        loop.append(_sq_err(fit_krr(rest[:, :-1], rest[:, -1], form=form), z[i]))
    assert target["nested_loo_mse"] == pytest.approx(np.mean(loop), rel=1e-12)

    (pooled,) = run_method("pooled", split, training=training, rng=rng(0))
    assert pooled["train_points"] == len(z) + len(split.z_source)
    loop = []
    for i in range(len(z)):
        rest = np.delete(z, i, axis=0)
        both = np.concatenate([rest, split.z_source])
        loop.append(_sq_err(fit_krr(both[:, :-1], both[:, -1], scored_rows=len(rest), form=form), z[i]))
    assert pooled["nested_loo_mse"] == pytest.approx(np.mean(loop), rel=1e-12)


def test_oracle_augments_with_the_true_mechanism(synthetic_split):
    panel, split = synthetic_split
    (oracle,) = run_method("oracle", split, training=Training(nu=0.1), rng=rng(0), mechanism=panel.mechanism)
    # 5^4 recombinations; the 5 diagonal ones reproduce the originals and are not counted twice
    assert oracle["augmented"] <= 5**4 - 5 and oracle["train_points"] == 5 + oracle["augmented"]
    assert oracle["augmented"] == pytest.approx(oracle["acceptance"] * 5**4 - 5, abs=5)
    with pytest.raises(UserError, match="synthetic data only"):
        run_method("oracle", split, training=Training(), rng=rng(0))


def _explicit_augmented_fit(z, f, f_inv, accept, form):
    """Every off-diagonal recombination of the rows of z through f⁻¹ / f, filtered, then KRR scored on z only."""
    s = f_inv(z)
    n, dim = s.shape
    s_bar = np.array([[s[idx[d], d] for d in range(dim)]
                      for idx in itertools.product(range(n), repeat=dim) if len(set(idx)) > 1])
    points = f(s_bar)
    z_fit = np.concatenate([z, points[accept(points)]])
    return fit_krr(z_fit[:, :-1], z_fit[:, -1], scored_rows=n, form=form)


@pytest.mark.parametrize("form", ["reference", "dual"])
def test_nested_loo_reaugments_without_the_held_out_point(synthetic_split, form):
    panel, split = synthetic_split
    m = panel.mechanism
    (oracle,) = run_method("oracle", split, training=Training(krr_form=form), rng=rng(0), mechanism=m)
    accept = SupportFilter(split.z_source, nu=0.1)
    z = split.z_train
    full = _explicit_augmented_fit(z, m.f, m.f_inv, accept, form)
    assert oracle["loocv_mse"] == pytest.approx(full.loocv_mse, rel=1e-9)
    nested = np.mean([_sq_err(_explicit_augmented_fit(np.delete(z, i, axis=0), m.f, m.f_inv, accept, form), z[i])
                      for i in range(len(z))])
    assert oracle["nested_loo_mse"] == pytest.approx(nested, rel=1e-9)
    # the partial LOOCV of the full fit leaks: the held-out point's components are in the augmented set
    assert oracle["nested_loo_mse"] != pytest.approx(oracle["loocv_mse"], rel=1e-3)
