"""Exact checks of parameter vectors: flatten/unflatten, functional_call, batched evaluation."""

import pytest
import torch

from raygen.errors import UserError
from raygen.models.params import (
    ParamLayout, base_state, batched_accuracy, batched_logits, flatten, functional_logits, unflatten,
)
from raygen.weightgen.zoo import init_model, subset_names



ARCH = dict(in_channels=1, num_classes=10, width=4, feature_dim=16)


def test_flatten_unflatten_round_trip_is_exact():
    model = init_model(ARCH, seed=0)
    layout = ParamLayout.of(model)
    theta = flatten(dict(model.named_parameters()), layout)
    assert theta.shape == (sum(p.numel() for p in model.parameters()),)
    back = unflatten(theta, layout)
    for name, p in model.named_parameters():
        assert torch.equal(back[name], p)
    assert torch.equal(flatten(back, layout), theta)
    assert ParamLayout.from_dict(layout.to_dict()) == layout


@pytest.mark.parametrize("subset", ["all", "head", "last2"])
def test_functional_call_equals_module(subset):
    model = init_model(ARCH, seed=1).eval()
    other = init_model(ARCH, seed=2).eval()
    layout = ParamLayout.of(model, subset_names(model, subset))
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # other's subset put into model through the vector == a module holding exactly those weights
    theta = flatten(dict(other.named_parameters()), layout)
    expected_net = init_model(ARCH, seed=1).eval()
    with torch.no_grad():
        for name, value in unflatten(theta, layout).items():
            dict(expected_net.named_parameters())[name].copy_(value)
    out = functional_logits(model, base_state(model), layout, theta, x)
    assert torch.equal(out, expected_net(x))
    if subset != "all":  # the fixed part really comes from the base model
        assert not torch.allclose(out, other(x))


def test_batched_evaluation_equals_per_model():
    model = init_model(ARCH, seed=0).eval()
    layout = ParamLayout.of(model)
    thetas = torch.stack([flatten(dict(init_model(ARCH, seed=s).named_parameters()), layout) for s in range(5)])
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(2))
    logits = batched_logits(model, base_state(model), layout, thetas, x, chunk=2)
    for s in range(5):
        with torch.no_grad():
            ref = init_model(ARCH, seed=s).eval()(x)
        torch.testing.assert_close(logits[s], ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(logits[s].argmax(-1), ref.argmax(-1))
    acc = batched_accuracy(model, base_state(model), layout, thetas, x, y)
    expected = torch.stack([(logits[s].argmax(-1) == y).double().mean() for s in range(5)])
    assert torch.equal(acc, expected)


def test_layout_mismatch_and_bad_vectors_are_user_errors():
    model = init_model(ARCH, seed=0)
    layout = ParamLayout.of(model)
    wider = ParamLayout.of(init_model({**ARCH, "width": 8}, seed=0))
    with pytest.raises(UserError, match="does not match the target architecture.*body.0.weight"):
        layout.check_matches(wider, "zoo part-0000000")
    with pytest.raises(UserError, match="entries but the layout needs"):
        unflatten(torch.zeros(layout.numel + 1), layout)
    with pytest.raises(UserError, match="do not exist"):
        ParamLayout.of(model, ["nope.weight"])


def test_pack_unpack_round_trip_batched_and_differentiable():
    from raygen.models.params import pack, unpack

    tensors = (torch.randn(2, 3, requires_grad=True), torch.randn(4), torch.randn(()))
    flat = pack(tensors)
    assert flat.shape == (11,)
    back = unpack(flat, [t.shape for t in tensors])
    assert all(torch.equal(a, b) for a, b in zip(back, tensors))
    (back[0].sum() * 2).backward()  # gradients flow through pack and unpack to the original tensor
    assert torch.equal(tensors[0].grad, torch.full((2, 3), 2.0))
    stack = torch.stack([flat.detach(), 2 * flat.detach()])  # leading dims are kept
    assert torch.equal(unpack(stack, [t.shape for t in tensors])[1][1], 2 * tensors[1])

