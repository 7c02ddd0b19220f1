import math

import pytest
import torch

from raygen.diffusion.structure import (
    LN2,
    SpectralEncoder,
    _OverlapScaled,
    adaptive_lambda,
    c_skip,
    gated_structure_term,
    js_critic_loss,
    js_divergence,
    js_structure_distance,
    median_bandwidths,
    mmd2_unbiased,
    sample_log_uniform,
    softmax_structure,
    structure_noise,
)
from raygen.train_loop import seeded

F64 = torch.float64


def test_js_of_known_rows():
    p = torch.tensor([[0.8, 0.2]], dtype=F64)
    q = torch.tensor([[0.2, 0.8]], dtype=F64)
    # M = (0.5, 0.5); both KLs equal by symmetry
    expected = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert js_divergence(p.log(), q.log()).item() == pytest.approx(expected, rel=1e-12)
    assert js_divergence(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-15)


def test_softmax_structure_of_known_cosines():
    r = 2**-0.5
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]], dtype=F64)  # cos: (0,1)=0, (0,2)=(1,2)=r
    tau = 0.25
    log_p = softmax_structure(z, tau)
    row0 = torch.tensor([1.0, math.exp(r / tau)], dtype=F64) / (1 + math.exp(r / tau))  # over rows 1, 2
    row2 = torch.tensor([0.5, 0.5], dtype=F64)  # rows 0 and 1 are both at cosine r from row 2
    assert torch.allclose(log_p[0].exp(), row0, rtol=1e-12)
    assert torch.allclose(log_p[2].exp(), row2, rtol=1e-12)
    # the distance against a structure with row 0's neighbours swapped: the known JS of those rows
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]], dtype=F64)  # (0,1)=r, (0,2)=0, (1,2)=r
    q0 = row0.flip(0)
    q1 = torch.tensor([0.5, 0.5], dtype=F64)  # row 1 of w: cos to 0 and 2 both r
    p1 = torch.tensor([1.0, math.exp(r / tau)], dtype=F64) / (1 + math.exp(r / tau))  # row 1 of z: (1,0)=0, (1,2)=r
    q2 = torch.tensor([math.exp(r / tau), 1.0], dtype=F64) / (1 + math.exp(r / tau))  # row 2 of w: (2,0)=0, (2,1)=r
    rows = [(row0, q0), (p1, q1), (row2, q2)]

    def js(a, b):
        m = (a + b) / 2
        return 0.5 * float((a * (a / m).log()).sum() + (b * (b / m).log()).sum())

    expected = sum(js(a, b) for a, b in rows) / 3
    assert js_structure_distance(z, w, tau).item() == pytest.approx(expected, rel=1e-10)


def test_js_distance_zero_for_identical_and_bounded_by_ln2():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g, dtype=F64)
    assert js_structure_distance(z, 3 * z).item() == pytest.approx(0.0, abs=1e-14)
    worst = 0.0
    for tau in (1.0, 0.1, 0.01, 0.001):
        for _ in range(5):
            a, b = torch.randn(2, 16, 8, generator=g, dtype=F64)
            d = js_structure_distance(a, b, tau).item()
            assert 0.0 <= d <= LN2 + 1e-12
            worst = max(worst, d)
    assert worst > 0.5 * LN2  # at small tau the rows become near one-hot and approach the bound


def test_mmd_closed_form_and_unbiased_for_identical_distributions():
    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    y = torch.tensor([[0.0], [2.0]], dtype=F64)
    e = math.exp
    expected = e(-0.5) + e(-2.0) - 2 * (1 + e(-2.0) + 2 * e(-0.5)) / 4
    assert mmd2_unbiased(x, y, torch.tensor([1.0], dtype=F64)).item() == pytest.approx(expected, rel=1e-12)
    # two independent samples of one distribution: zero in expectation (within 4 standard errors)
    g = torch.Generator().manual_seed(1)
    bw = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    vals = torch.tensor([mmd2_unbiased(*torch.randn(2, 10, 3, generator=g, dtype=F64), bw).item() for _ in range(1000)])
    assert abs(vals.mean().item()) < 4 * vals.std().item() / math.sqrt(len(vals))
    # and clearly positive for different distributions (the test can fail)
    shifted = torch.tensor([mmd2_unbiased(torch.randn(10, 3, generator=g, dtype=F64),
                                          torch.randn(10, 3, generator=g, dtype=F64) + 1.0, bw).item()
                            for _ in range(200)])
    assert shifted.mean().item() > 10 * shifted.std().item() / math.sqrt(len(shifted))


def test_median_bandwidths():
    z = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)  # pairwise distances 1, 2, 3 -> median 2
    bw = median_bandwidths(z[:2], z[2:], scales=(0.5, 1.0))
    assert torch.allclose(bw, torch.tensor([1.0, 2.0], dtype=F64))


def _jacobian_norm(f, x):
    J = torch.autograd.functional.jacobian(f, x).reshape(-1, x.numel())
    return torch.linalg.matrix_norm(J, ord=2).item()


def test_spectral_encoder_is_1_lipschitz():
    enc = seeded(0, lambda: SpectralEncoder(1, width=8, embed_dim=8)).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(30):  # spectral_norm does one power iteration per training forward: converge them
            enc(torch.randn(4, 1, 8, 8, generator=g, dtype=F64))
    enc.eval()
    unscaled = []
    for _ in range(3):
        x = torch.randn(1, 1, 8, 8, generator=g, dtype=F64)
        assert _jacobian_norm(enc, x) <= 1 + 1e-9  # the Jacobian's exact largest singular value
        h = x
        for layer in enc.net:  # every conv operator (not just its reshaped kernel) has norm <= 1
            if isinstance(layer, _OverlapScaled):
                assert _jacobian_norm(layer, h) <= 1 + 1e-9
                unscaled.append(_jacobian_norm(layer.conv, h))
            h = layer(h)
    # without the overlap scaling the spectral norm alone does not bound the conv (the check can fail)
    assert max(unscaled) > 1.5
    # no biases: positively homogeneous, so the cosines are scale-free
    x = torch.rand(2, 1, 8, 8, generator=g, dtype=F64)
    assert torch.allclose(enc(3 * x), 3 * enc(x))


def test_adaptive_lambda_gives_requested_gradient_ratio():
    # toy: output layer W (3x4), L_denoise = 1/2 |W x - y|^2, d = sum(sin(W x)) -- gradients in closed form
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    x, y = torch.randn(4, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    loss_d = 0.5 * (W @ x - y).pow(2).sum()
    d = torch.sin(W @ x).sum()
    for ratio in (0.03, 0.1, 0.3):
        lam = adaptive_lambda(loss_d, d, W, ratio)
        g_denoise = torch.outer(W.detach() @ x - y, x)
        g_structure = torch.outer(torch.cos(W.detach() @ x), x)
        assert (lam * g_structure.norm() / g_denoise.norm()).item() == pytest.approx(ratio, rel=1e-12)
        assert not lam.requires_grad


def test_gated_sigma_and_noise_in_range_shared_over_ranks():
    g = torch.Generator().manual_seed(0)
    s = sample_log_uniform(20000, 0.02, 0.5, g)
    assert s.min() >= 0.02 and s.max() <= 0.5
    assert s.log().mean().item() == pytest.approx((math.log(0.02) + math.log(0.5)) / 2, abs=0.02)
    sig0, eps0 = structure_noise((3, 7), 0, (4, 1, 8, 8), 0.02, 0.5)
    sig1, eps1 = structure_noise((3, 7), 1, (4, 1, 8, 8), 0.02, 0.5)
    assert sig0 == sig1 and 0.02 <= sig0 <= 0.5 and not torch.equal(eps0, eps1)
    assert structure_noise((3, 8), 0, (4, 1, 8, 8), 0.02, 0.5)[0] != sig0
    assert c_skip(0.5, 0.5) == 0.5 and c_skip(0.0, 0.5) == 1.0


def test_gated_term_gradient_ratio_and_frozen_encoder():
    from raygen.models import Denoiser

    model = seeded(0, lambda: Denoiser("tiny"))
    enc = seeded(1, lambda: SpectralEncoder(1, width=8, embed_dim=8))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 8, 8, generator=g)
    W = model.net.out.weight
    sigma, eps = structure_noise((0, 0), 0, x0.shape, 0.02, 0.5)
    loss_d = (model(x0 + 0.3 * torch.randn(x0.shape, generator=g), 0.3) - x0).pow(2).mean()
    critic_calls = []
    term, logs = gated_structure_term(model, enc, x0, None, loss_d, W, sigma=sigma, eps=eps, sigma_data=0.5,
                                      ratio=0.1, critic=lambda a, b: critic_calls.append(b.requires_grad))
    assert critic_calls == [False]  # the critic sees a detached x_hat
    g_term = torch.autograd.grad(term, W, retain_graph=True)[0]
    g_d = torch.autograd.grad(loss_d, W)[0]
    assert (g_term.norm() / g_d.norm()).item() == pytest.approx(0.1, rel=1e-4)
    assert 0 <= logs["structure_js"] <= LN2 and logs["structure_sigma"] == sigma
    assert all(p.grad is None and p.requires_grad for p in enc.parameters())
    # the critic's loss does train the encoder
    js_critic_loss(enc, x0, x0.flip(0) * 0.5).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
