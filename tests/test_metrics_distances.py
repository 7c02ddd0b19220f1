import math

import pytest
import torch

from raygen.metrics import (energy_distance, frechet_distance, frechet_gaussians, kid, mmd2_gaussian,
                            precision_recall)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_frechet_gaussians_closed_forms():
    # commuting (diagonal) covariances: |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    assert frechet_gaussians(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(5.0 + 1.0 + 1.0, abs=1e-12)
    # non-commuting 2x2: W2^2 between Gaussians, checked against the trace of sqrtm via scipy
    import numpy as np
    from scipy.linalg import sqrtm

    S1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    S2 = np.array([[1.0, -0.3], [-0.3, 0.5]])
    expected = np.trace(S1 + S2 - 2 * sqrtm(sqrtm(S1) @ S2 @ sqrtm(S1)).real)
    assert frechet_gaussians(torch.zeros(2), torch.tensor(S1), torch.zeros(2), torch.tensor(S2)) == pytest.approx(expected, abs=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_gaussians(torch.tensor([1.0]), torch.tensor([[0.25]]), torch.tensor([3.0]), torch.tensor([[4.0]])) == pytest.approx(4 + 1.5**2)


def test_frechet_distance_of_samples_and_identical_sets():
    g = _gen()
    x = torch.randn(20000, 2, generator=g, dtype=torch.float64)
    y = 2 * torch.randn(20000, 2, generator=g, dtype=torch.float64) + 1
    # N(0, I) vs N(1, 4I): 2*1 + 2*(2-1)^2 = 4
    assert frechet_distance(x, y) == pytest.approx(4.0, abs=0.1)
    assert abs(frechet_distance(x, x)) < 1e-8


def test_kid_identical_and_different():
    g = _gen(1)
    x = torch.randn(600, 8, generator=g)
    # subsets of the whole set: both sides hold the same points, only the diagonal terms differ (O(1/m))
    same, _ = kid(x, x, subsets=2, subset_size=600, generator=_gen(2))
    diff, _ = kid(x, x + 1.0, subsets=2, subset_size=600, generator=_gen(2))
    assert diff > 0.5 and abs(same) < 0.01 * diff


def test_mmd_gaussian_closed_form():
    # x ~ N(0, s^2 I), y ~ N(delta, s^2 I) in d dims, RBF bandwidth l
    d, s, l, delta = 2, 1.0, 1.0, torch.tensor([1.0, 0.0], dtype=torch.float64)
    g = _gen(3)
    x = s * torch.randn(3000, d, generator=g, dtype=torch.float64)
    y = s * torch.randn(3000, d, generator=g, dtype=torch.float64) + delta
    same = (l**2 / (l**2 + 2 * s**2)) ** (d / 2)
    cross = same * math.exp(-float(delta @ delta) / (2 * (l**2 + 2 * s**2)))
    assert mmd2_gaussian(x, y, l) == pytest.approx(2 * same - 2 * cross, abs=5e-3)


def test_energy_distance_exact_small_sets():
    # X = {0, 2}, Y = {1}: 2*1 - (0+2+2+0)/4 - 0 = 1
    assert energy_distance(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0]])) == pytest.approx(1.0)
    x = torch.randn(50, 3, generator=_gen(4))
    assert abs(energy_distance(x, x)) < 1e-12


def test_precision_recall_identical_disjoint_and_subset():
    g = _gen(5)
    real = torch.randn(500, 2, generator=g)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # generated data concentrated in a sub-region of the real data: high precision, low recall
    core = real[real.norm(dim=1) < 0.5]
    precision, recall = precision_recall(real, core)
    assert precision == 1.0 and recall < 0.4
