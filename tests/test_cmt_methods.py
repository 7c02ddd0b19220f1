"""raygen.cmt.methods: FastICA recovers a linear mixing; the oracle's augmented KRR; baselines' bookkeeping."""

import numpy as np
import pytest

from raygen.cmt.datasets import split_target, synthetic_panel
from raygen.cmt.krr import fit_krr
from raygen.cmt.methods import Training, fit_fastica, run_method
from raygen.errors import UserError


def test_fastica_recovers_a_linear_mixing_up_to_permutation_and_scale():
    rng = np.random.default_rng(0)
    s = np.column_stack([rng.laplace(size=3000), rng.uniform(-1, 1, 3000), rng.exponential(size=3000) - 1])
    mixing = np.array([[1.0, 0.6, -0.4], [0.3, 1.0, 0.8], [-0.7, 0.2, 1.0]])
    z = s @ mixing.T + np.array([2.0, -1.0, 0.5])
    h, h_inv = fit_fastica(z, seed=0)
    s_hat = h(z)
    corr = np.abs(np.corrcoef(s_hat.T, s.T)[:3, 3:])
    match = corr.argmax(axis=1)
    assert sorted(match) == [0, 1, 2]  # a permutation
    assert corr.max(axis=1).min() > 0.99
    np.testing.assert_allclose(h_inv(s_hat), z, atol=1e-8)


@pytest.fixture(scope="module")
def synthetic_split():
    panel = synthetic_panel(0, n_sources=4, source_size=100, target_size=300)
    return panel, split_target(panel, "target", 5, [0, 5])


def test_baselines_are_plain_krr_fits(synthetic_split):
    _, split = synthetic_split
    (target,) = run_method("target_only", split, training=Training(), seed=0)
    model = fit_krr(split.z_train[:, :-1], split.z_train[:, -1])
    assert target["loocv_mse"] == model.loocv_mse
    assert target["test_mse"] == pytest.approx(np.mean((model.predict(split.z_test[:, :-1]) - split.z_test[:, -1]) ** 2))
    (pooled,) = run_method("pooled", split, training=Training(), seed=0)
    assert pooled["train_points"] == len(split.z_train) + len(split.z_source)


def test_oracle_augments_with_the_true_mechanism(synthetic_split):
    panel, split = synthetic_split
    (oracle,) = run_method("oracle", split, training=Training(nu=0.1), seed=0, mechanism=panel.mechanism)
    # 5^4 recombinations; the 5 diagonal ones reproduce the originals and are not counted twice
    assert oracle["augmented"] <= 5**4 - 5 and oracle["train_points"] == 5 + oracle["augmented"]
    assert oracle["augmented"] == pytest.approx(oracle["acceptance"] * 5**4 - 5, abs=5)
    with pytest.raises(UserError, match="synthetic data only"):
        run_method("oracle", split, training=Training(), seed=0)
