import pytest
import torch

from raygen.errors import UserError
from raygen.weightgen.normalize import TensorNorm, WeightNorm, norm_from_dict
from raygen.models.params import ParamLayout


def _zoo():
    layout = ParamLayout(("a", "b", "c"), ((2, 3), (4,), (1,)))
    g = torch.Generator().manual_seed(0)
    thetas = torch.cat([5 + 2 * torch.randn(50, 6, generator=g), -1 + 0.01 * torch.randn(50, 4, generator=g),
                        torch.full((50, 1), 3.0)], 1)
    return layout, thetas


def test_per_tensor_statistics_and_round_trip():
    layout, thetas = _zoo()
    norm = TensorNorm.fit(thetas, layout)
    torch.testing.assert_close(norm.mean, torch.tensor([thetas[:, :6].double().mean(), thetas[:, 6:10].double().mean(), 3.0],
                                                       dtype=torch.float64))
    assert norm.std[2] == 1.0  # a constant tensor is only centred
    z = norm.normalize(thetas.double())
    for sl in (slice(0, 6), slice(6, 10)):  # each tensor is z-scored over the zoo
        assert abs(float(z[:, sl].mean())) < 1e-12 and abs(float(z[:, sl].std(correction=0)) - 1) < 1e-12
    assert torch.equal(z[:, 10], torch.zeros(50, dtype=torch.float64))
    torch.testing.assert_close(norm.denormalize(z), thetas.double(), rtol=0, atol=1e-12)
    again = norm_from_dict(norm.to_dict())
    assert isinstance(again, TensorNorm) and not isinstance(again, WeightNorm)
    torch.testing.assert_close(again.denormalize(again.normalize(thetas)), thetas, rtol=0, atol=1e-5)


def test_per_weight_statistics_keep_a_tiny_spread_and_round_trip():
    layout, thetas = _zoo()
    thetas[:, 0] = 0.5 + 1e-3 * torch.arange(50)  # one coordinate moving a little, as along a trajectory
    norm = WeightNorm.fit(thetas, layout)
    t = thetas.double()
    torch.testing.assert_close(norm.mean, t.mean(0))
    z = norm.normalize(t)
    varying = t.std(0) > 0
    # every varying coordinate has mean 0 and std 1 over the zoo, the slow one included
    torch.testing.assert_close(z[:, varying].mean(0), torch.zeros(int(varying.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(z[:, varying].std(0, correction=0), torch.ones(int(varying.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert torch.equal(z[:, 10], torch.zeros(50, dtype=torch.float64))  # constant: only centred
    # per tensor, the slow coordinate's spread is 1e-3-scale, swamped by tensor a's other entries
    assert float(TensorNorm.fit(thetas, layout).normalize(t)[:, 0].std()) < 0.05
    torch.testing.assert_close(norm.denormalize(z), t, rtol=0, atol=1e-12)
    again = norm_from_dict(norm.to_dict())
    assert isinstance(again, WeightNorm)
    torch.testing.assert_close(again.normalize(t), z, rtol=0, atol=0)


@pytest.mark.parametrize("norm", [TensorNorm, WeightNorm])
def test_empty_zoo_is_a_user_error(norm):
    layout, _ = _zoo()
    with pytest.raises(UserError, match="empty zoo"):
        norm.fit(torch.zeros(0, 11), layout)
