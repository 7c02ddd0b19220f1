import pytest
import torch

from raygen.errors import UserError
from raygen.gradvar.variance import welford


def test_welford_equals_two_pass_variance():
    g = torch.Generator().manual_seed(0)
    # a large common offset is where the textbook sum-of-squares formula loses digits; Welford must not
    xs = [1e3 + torch.randn(5, 7, generator=g, dtype=torch.float64) * torch.arange(1, 8) for _ in range(500)]
    n, mean, var = welford(iter(xs))
    stacked = torch.stack(xs)
    two_pass_mean = stacked.mean(0)
    two_pass = ((stacked - two_pass_mean) ** 2).sum(0) / (len(xs) - 1)
    assert n == 500
    torch.testing.assert_close(mean, two_pass_mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(var, two_pass, rtol=0, atol=1e-10)


def test_welford_does_not_modify_its_inputs_and_needs_two_samples():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    n, mean, var = welford([a, b])
    assert a.tolist() == [1.0, 2.0] and mean.tolist() == [2.0, 4.0] and var.tolist() == [2.0, 8.0]
    with pytest.raises(UserError, match="at least 2 samples"):
        welford([a])
