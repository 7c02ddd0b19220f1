"""raygen.cmt.augment: exact n^D recombination with the true f, seeded subsets, the one-class-SVM filter."""

import itertools

import numpy as np

from raygen.cmt.augment import SupportFilter, augment, recombination_indices
from raygen.cmt.datasets import synthetic_panel


def test_true_f_augmentation_is_exactly_the_n_to_the_d_recombination():
    mechanism = synthetic_panel(np.random.default_rng(0), n_sources=3, source_size=20, target_size=10).mechanism
    s = np.random.default_rng(1).standard_normal((3, 4))
    z = mechanism.f(s)
    out = augment(z, mechanism.f_inv, mechanism.f, max_size=10_000, rng=np.random.default_rng(0))
    assert out.proposed == len(out.z) == 3**4 and out.acceptance == 1.0
    expected = np.array([mechanism.f(np.array([[s[i, d] for d, i in enumerate(t)]]))[0]
                         for t in itertools.product(range(3), repeat=4)])
    np.testing.assert_allclose(out.z, expected, atol=1e-10)  # same members, in lexicographic order
    assert [tuple(t) for t in out.idx] == list(itertools.product(range(3), repeat=4))


def test_random_subset_above_the_limit_is_distinct_and_seeded():
    idx = recombination_indices(6, 4, max_size=100, rng=np.random.default_rng(3))
    assert idx.shape == (100, 4) and len({tuple(t) for t in idx}) == 100 and idx.max() == 5
    assert np.array_equal(idx, recombination_indices(6, 4, max_size=100, rng=np.random.default_rng(3)))
    assert not np.array_equal(idx, recombination_indices(6, 4, max_size=100, rng=np.random.default_rng(4)))
    assert len(recombination_indices(6, 4, max_size=6**4, rng=np.random.default_rng(0))) == 6**4


def test_one_class_svm_filter_rejects_a_far_outlier_and_non_finite_points():
    rng = np.random.default_rng(0)
    accept = SupportFilter(rng.standard_normal((400, 4)), nu=0.1)
    fresh = rng.standard_normal((400, 4))
    assert accept(fresh).mean() > 0.75
    assert not accept(np.full((1, 4), 20.0))[0]
    assert not accept(np.array([[0.0, np.nan, 0.0, 0.0], [0.0, 0.0, np.inf, 0.0]])).any()
    assert accept(np.zeros((1, 4)))[0]


def test_filtered_augmentation_reports_the_acceptance_ratio():
    rng = np.random.default_rng(5)
    accept = SupportFilter(rng.standard_normal((300, 2)), nu=0.1)
    z = np.array([[0.0, 0.0], [0.3, -0.2], [9.0, 9.0]])  # recombinations with the far point fall outside
    out = augment(z, lambda x: x, lambda x: x, max_size=100, rng=np.random.default_rng(0), accept=accept)
    assert out.proposed == 9 and 0 < len(out.z) < 9
    assert abs(out.acceptance - len(out.z) / 9) < 1e-12
    assert not any(9.0 in row for row in out.z)
