"""Sample i depends only on seeds[i]: bit-identical alone, in a batch of 64, first, last or reversed."""

import pytest
import torch

from raygen.sampling import SAMPLERS, TARGETS, initial_state

SIGMAS = [1.0, 0.5, 0.2]
CASES = {
    "mmdgs-full": ("mmdgs", {"covariance": "full"}),
    "mmdgs-diag": ("mmdgs", {"covariance": "diag", "probes": 2}),
    "mmdgs-iso": ("mmdgs", {"covariance": "iso"}),
    "langevin": ("langevin", {"step_size": 0.01}),
    "annealed_langevin": ("annealed_langevin", {"step_size": 0.01}),
    "tweedie": ("tweedie", {}),
}


@pytest.mark.parametrize(
    "target_name, dtype", [("mog4", torch.float64), ("mog4", torch.float32), ("gaussian2d", torch.float64)]
)
@pytest.mark.parametrize("case", CASES)
def test_sample_is_bit_identical_across_batches(case, target_name, dtype):
    name, kwargs = CASES[case]
    sampler, target = SAMPLERS[name], TARGETS[target_name]()

    def run(seeds):
        x0 = initial_state(seeds, (2,), scale=2.0, dtype=dtype)
        x, _ = sampler(target, x0, SIGMAS, steps_per_level=2, seeds=seeds, **kwargs)
        assert x.dtype == dtype and torch.isfinite(x).all()
        return x

    seeds = list(range(1000, 1064))
    batch = run(seeds)
    assert torch.equal(run(seeds[:1])[0], batch[0])
    assert torch.equal(run(seeds[-1:])[0], batch[-1])
    assert torch.equal(run(seeds[::-1]), batch.flip(0))
    assert torch.equal(run(seeds[5:12]), batch[5:12])
    assert len(torch.unique(batch, dim=0)) == 64  # and different seeds give different samples
