"""Per-sample random streams: a row depends only on its own seed."""

import pytest
import torch

from raygen.errors import UserError
from raygen.sampling.noise import PerSampleNoise, initial_state


def draws(seeds, dtype=torch.float64):
    noise = PerSampleNoise(seeds)
    return torch.cat([noise.randn(3, dtype=dtype), noise.rademacher(2, dtype=dtype), noise.randn(3, dtype=dtype)], 1)


def test_row_depends_only_on_its_seed():
    seeds = list(range(100, 164))
    batch = draws(seeds)
    assert torch.equal(batch[0], draws([100])[0])
    assert torch.equal(batch[63], draws([163])[0])
    assert torch.equal(draws(seeds[::-1]), batch.flip(0))


def test_distinct_seeds_and_streams_differ():
    a, b = draws([5])[0], draws([5 + 2**32])[0]  # torch.Generator would alias these two
    assert not torch.equal(a, b)
    assert not torch.equal(initial_state([5], (3,)), PerSampleNoise([5]).randn(3))


def test_distributions_and_dtypes():
    noise = PerSampleNoise(range(2000))
    z = noise.randn(4, dtype=torch.float32)
    assert z.shape == (2000, 4) and z.dtype == torch.float32
    assert abs(float(z.mean())) < 0.05 and abs(float(z.var()) - 1) < 0.05
    v = noise.rademacher(5)
    assert set(v.unique().tolist()) == {-1.0, 1.0} and abs(float(v.mean())) < 0.05
    x = initial_state(torch.arange(2000), (2, 3), scale=3.0)
    assert x.shape == (2000, 2, 3) and abs(float(x.std()) - 3) < 0.1


@pytest.mark.parametrize("bad", [[-1], [1.5], [True], torch.tensor([0.5])])
def test_bad_seeds_are_user_errors(bad):
    with pytest.raises(UserError, match="seeds"):
        PerSampleNoise(bad)
