"""Hypergradients against closed forms (ridge), finite differences and dense autograd (modules with buffers)."""

import pytest
import torch

from raygen.hypergrad.hypergradient import functional_module, hypergradient
from raygen.models.params import pack

torch_f64 = dict(dtype=torch.float64)


def ridge_problem(seed=0, n=40, n_val=30, d=6):
    g = torch.Generator().manual_seed(seed)
    X, Xv = torch.randn(n, d, generator=g, **torch_f64), torch.randn(n_val, d, generator=g, **torch_f64)
    w_true = torch.randn(d, generator=g, **torch_f64)
    y = X @ w_true + 0.5 * torch.randn(n, generator=g, **torch_f64)
    yv = Xv @ w_true + 0.5 * torch.randn(n_val, generator=g, **torch_f64)
    lam = torch.rand(d, generator=g, **torch_f64) + 0.1
    return X, y, Xv, yv, lam


def ridge_losses(X, y, Xv, yv):
    def inner(params, hparams):
        (w,), (lam,) = params, hparams
        return ((X @ w - y) ** 2).mean() / 2 + 0.5 * (lam * w**2).sum()

    def outer(params, hparams):
        (w,) = params
        return ((Xv @ w - yv) ** 2).mean() / 2

    return inner, outer


def ridge_solution(X, y, lam):
    H = X.T @ X / len(X) + torch.diag(lam)
    return torch.linalg.solve(H, X.T @ y / len(X)), H


def test_ridge_closed_form_and_finite_differences():
    X, y, Xv, yv, lam = ridge_problem()
    inner, outer = ridge_losses(X, y, Xv, yv)
    w_star, H = ridge_solution(X, y, lam)
    (hg,) = hypergradient(inner, outer, (w_star,), (lam,), solver="exact")

    grad_w_g = Xv.T @ (Xv @ w_star - yv) / len(Xv)
    closed = -w_star * torch.linalg.solve(H, grad_w_g)
    assert torch.allclose(hg, closed, rtol=0, atol=1e-8)

    def g_of(lam_):
        w, _ = ridge_solution(X, y, lam_)
        return outer((w,), (lam_,))

    eps = 1e-5
    fd = torch.stack([(g_of(lam + eps * e) - g_of(lam - eps * e)) / (2 * eps) for e in torch.eye(len(lam), **torch_f64)])
    assert torch.allclose(hg, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "solver,kwargs",
    [("cg", {"iters": 50, "tol": 1e-14}), ("neumann", {"iters": 400, "alpha": 0.3}), ("nystrom", {"rank": 6, "rho": 1e-7}),
     ("randomized_nystrom", {"rank": 6, "rho": 1e-7}), ("nystrom_pcg", {"rank": 2, "rho": 1e-7, "iters": 50, "tol": 1e-14})],
)
def test_ridge_hypergradient_every_solver(solver, kwargs):
    X, y, Xv, yv, lam = ridge_problem(seed=1)
    inner, outer = ridge_losses(X, y, Xv, yv)
    w_star, _ = ridge_solution(X, y, lam)
    (exact,) = hypergradient(inner, outer, (w_star,), (lam,), solver="exact")
    (approx,) = hypergradient(inner, outer, (w_star,), (lam,), solver=solver, **kwargs)
    # Nyström at rank = p and Nyström-PCG solve (H + rho I): rho = 1e-7 biases it by ~rho/lambda_min = 1e-6 relative
    assert torch.allclose(approx, exact, rtol=1e-5, atol=1e-9)


def test_direct_hparam_term_is_included():
    # outer loss depending on phi directly: g = val loss + 0.5*c*|lam|^2 adds c*lam
    X, y, Xv, yv, lam = ridge_problem(seed=2)
    inner, outer = ridge_losses(X, y, Xv, yv)
    w_star, _ = ridge_solution(X, y, lam)
    (base,) = hypergradient(inner, outer, (w_star,), (lam,), solver="exact")
    outer_reg = lambda p, h: outer(p, h) + 0.5 * 0.3 * (h[0] ** 2).sum()
    (with_reg,) = hypergradient(inner, outer_reg, (w_star,), (lam,), solver="exact")
    assert torch.allclose(with_reg - base, 0.3 * lam, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_module_with_batchnorm_matches_dense_autograd(mode):
    torch.manual_seed(0)  # module init only; data below uses its own generator
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    getattr(model, mode)()
    with torch.no_grad():
        model[1].running_mean.fill_(0.2)
        model[1].running_var.fill_(1.5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g, **torch_f64), torch.randn(16, 1, generator=g, **torch_f64)
    xv, yv = torch.randn(10, 3, generator=g, **torch_f64), torch.randn(10, 1, generator=g, **torch_f64)
    params, apply = functional_module(model)
    log_wd = torch.linspace(-1, 0.5, len(params), **torch_f64)  # one weight decay per tensor

    def inner(theta, phi):
        decay = sum(torch.exp(phi[0][i]) * (t**2).sum() for i, t in enumerate(theta))
        return ((apply(theta, x) - y) ** 2).mean() + 0.5 * decay

    def outer(theta, phi):
        return ((apply(theta, xv) - yv) ** 2).mean() + 0.01 * (phi[0] ** 2).sum()

    running_mean_before = model[1].running_mean.clone()
    (hg,) = hypergradient(inner, outer, params, (log_wd,), solver="exact")
    assert torch.equal(model[1].running_mean, running_mean_before)

    # dense reference with plain autograd on the joint vector z = (theta, phi)
    sizes = [t.numel() for t in params]
    p = sum(sizes)

    def split(z):
        theta, start = [], 0
        for t, s in zip(params, sizes):
            theta.append(z[start : start + s].view_as(t))
            start += s
        return tuple(theta), (z[p:],)

    z = torch.cat([pack(params), log_wd])
    hess = torch.autograd.functional.hessian(lambda z: inner(*split(z)), z)
    dg = torch.autograd.functional.jacobian(lambda z: outer(*split(z)), z)
    H_tt, H_pt = hess[:p, :p], hess[p:, :p]
    expected = dg[p:] - H_pt @ torch.linalg.solve(H_tt, dg[:p])
    assert torch.allclose(hg, expected, rtol=1e-8, atol=1e-10)
