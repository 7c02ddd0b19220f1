import pytest
import torch

from raygen.errors import UserError
from raygen.weightgen.normalize import TensorNorm
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
    again = TensorNorm.from_dict(norm.to_dict())
    torch.testing.assert_close(again.denormalize(again.normalize(thetas)), thetas, rtol=0, atol=1e-5)


def test_empty_zoo_is_a_user_error():
    layout, _ = _zoo()
    with pytest.raises(UserError, match="empty zoo"):
        TensorNorm.fit(torch.zeros(0, 11), layout)
