"""raygen.cmt.inn: exact inverse, identity-initialised couplings, log-det against autograd's Jacobian."""

import torch

from raygen.cmt.inn import AffineCoupling, InvertibleLinear, InvertibleNet


def _net(dim, depth, hidden, seed=0) -> InvertibleNet:
    return InvertibleNet(dim, depth, hidden, generator=torch.Generator().manual_seed(seed))


def _randomised(dim=4, depth=3, hidden=8, seed=0, off_orthogonal=True) -> InvertibleNet:
    net = _net(dim, depth, hidden, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move every layer away from its init so the checks bite
        for layer in net.layers:
            if isinstance(layer, AffineCoupling):
                layer.out.weight.copy_(torch.randn(layer.out.weight.shape, generator=g, dtype=torch.float64) * 0.3)
                layer.out.bias.copy_(torch.randn(layer.out.bias.shape, generator=g, dtype=torch.float64) * 0.3)
            if off_orthogonal and isinstance(layer, InvertibleLinear):
                # off orthogonal (|det| far from 1): an orthogonal W has log|det| = 0, where a wrong sign hides
                scales = torch.exp(0.5 * torch.randn(dim, generator=g, dtype=torch.float64))
                layer.weight.copy_((layer.weight * scales) @ (torch.eye(dim, dtype=torch.float64)
                                                              + 0.1 * torch.randn(dim, dim, generator=g,
                                                                                  dtype=torch.float64)))
        net.layers[0].b.copy_(torch.randn(dim, generator=g, dtype=torch.float64))
        net.layers[0].log_scale.copy_(torch.randn(dim, generator=g, dtype=torch.float64) * 0.5)
    return net


def test_inverse_recovers_inputs_in_float64():
    net = _randomised(off_orthogonal=False)  # orthogonal W: the 1e-10 bound is on the couplings' round-off
    z = torch.randn(200, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    with torch.no_grad():
        s, _ = net(z)
        assert (s - z).abs().max() > 0.1  # h is not the identity
        assert (net.inverse(s) - z).abs().max() < 1e-10


def test_couplings_start_as_the_identity():
    net = _net(4, 5, 16)
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    couplings = [layer for layer in net.layers if isinstance(layer, AffineCoupling)]
    assert len(couplings) == 5
    for layer in couplings:
        y, log_det = layer(x)
        assert torch.equal(y, x)
        assert torch.equal(log_det, torch.zeros(50, dtype=torch.float64))


def test_log_det_matches_autograd_jacobian():
    net = _randomised(dim=5, depth=4)
    linear_log_dets = [float(torch.linalg.slogdet(layer.weight.detach())[1]) for layer in net.layers
                       if isinstance(layer, InvertibleLinear)]
    assert min(abs(d) for d in linear_log_dets) > 0.1  # the linear layers' log-dets carry weight in the check
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, log_det = net(z)
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda row: net(row[None])[0][0], z[i])
        assert abs(torch.linalg.slogdet(jac)[1] - log_det[i]) < 1e-10


def test_actnorm_initialisation_standardises_the_data():
    net = _net(3, 0, 4)  # ActNorm only
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * torch.tensor(
        [0.1, 2.0, 7.0], dtype=torch.float64) + 5
    net.initialize(z)
    s, _ = net(z)
    assert torch.allclose(s.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(s.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
