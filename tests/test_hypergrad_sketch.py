"""Randomized Nyström sketches and Nyström-PCG against exact answers (dense solves, eigendecompositions)."""

import pytest
import torch

from raygen.hypergrad.sketch import NystromSketch, nystrom_pcg_ihvp, nystrom_preconditioner, nystrom_sketch
from raygen.hypergrad.solvers import preconditioned_cg

f64 = dict(dtype=torch.float64)
P = 12
RHO = 0.1


def spd(p, seed, cond=20.0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, **f64))
    return Q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), p, **f64)) @ Q.T


def rhs(p, seed):
    return torch.randn(p, generator=torch.Generator().manual_seed(1000 + seed), **f64)


def low_rank_psd(p, r, seed):
    A = torch.randn(p, r, generator=torch.Generator().manual_seed(seed), **f64)
    return A @ A.T


def indefinite(p, seed):
    """Symmetric with eigenvalues 1..10 and three negative ones (-0.05, -0.02, -0.01)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, **f64))
    evals = torch.cat([torch.linspace(1, 10, p - 3, **f64), torch.tensor([-0.05, -0.02, -0.01], **f64)])
    return Q @ torch.diag(evals) @ Q.T


def sketch_of(H, rank, seed=0):
    return nystrom_sketch(lambda u: H @ u, torch.zeros(len(H), **f64), rank=rank,
                          generator=torch.Generator().manual_seed(seed))


def dense(op, p):
    return torch.stack([op(e) for e in torch.eye(p, **f64)], dim=1)


@pytest.mark.parametrize("r", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_randomized_nystrom_is_exact_on_psd_matrix_of_rank_at_most_k(r, seed):
    H = low_rank_psd(P, r, seed)
    sk = sketch_of(H, rank=5, seed=seed)
    approx = sk.U @ torch.diag(sk.lam) @ sk.U.T
    assert torch.linalg.matrix_norm(approx - H) / torch.linalg.matrix_norm(H) < 1e-10
    assert torch.allclose(sk.U.T @ sk.U, torch.eye(5, **f64), atol=1e-12)
    assert (sk.lam >= 0).all() and torch.equal(sk.lam, sk.lam.sort(descending=True).values)
    assert torch.allclose(sk.lam[:r], torch.linalg.eigvalsh(H).flip(0)[:r], rtol=1e-10)


def test_sketch_takes_its_k_products_in_one_batched_call_and_follows_generator():
    H = spd(P, 0)
    calls = []

    def hvp(u):
        calls.append(u.shape)
        return H @ u

    a = nystrom_sketch(hvp, torch.zeros(P, **f64), rank=4, generator=torch.Generator().manual_seed(5))
    assert len(calls) == 1
    b, c = sketch_of(H, 4, seed=5), sketch_of(H, 4, seed=6)
    assert torch.equal(a.U, b.U) and torch.equal(a.lam, b.lam)
    assert not torch.allclose(a.lam, c.lam)


@pytest.mark.parametrize("rank", [1, 4, P])
def test_preconditioner_is_symmetric_positive_definite_with_the_stated_spectrum(rank):
    sk = sketch_of(spd(P, 2), rank)
    Pinv = dense(nystrom_preconditioner(sk, RHO, torch.zeros(P, **f64)), P)
    assert torch.allclose(Pinv, Pinv.T, atol=1e-13)
    evals = torch.linalg.eigvalsh(Pinv)
    assert evals.min() > 0
    expected = torch.cat([(sk.lam[-1] + RHO) / (sk.lam + RHO), torch.ones(P - rank, **f64)]).sort().values
    assert torch.allclose(evals, expected, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcg_with_exact_eigendecomposition_converges_in_one_iteration(seed):
    H, v = spd(P, seed), rhs(P, seed)
    evals, Q = torch.linalg.eigh(H)
    exact_sketch = NystromSketch(U=Q.flip(1), lam=evals.flip(0))
    A = lambda u: H @ u + RHO * u
    x, used = preconditioned_cg(A, v, iters=P, tol=1e-12,
                                precondition=nystrom_preconditioner(exact_sketch, RHO, v))
    assert used == 1
    assert torch.allclose(x, torch.linalg.solve(H + RHO * torch.eye(P, **f64), v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cond", [20.0, 1e4])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rank", [1, 2, 4, 8])
@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_pcg_never_needs_more_iterations_than_cg(cond, seed, rank, tol):
    H, v = spd(P, seed, cond), rhs(P, seed)
    A = lambda u: H @ u + RHO * u
    _, cg_used = preconditioned_cg(A, v, iters=10 * P, tol=tol)
    x, pcg_used = preconditioned_cg(A, v, iters=10 * P, tol=tol,
                                    precondition=nystrom_preconditioner(sketch_of(H, rank, seed), RHO, v))
    assert pcg_used <= cg_used, (pcg_used, cg_used)
    exact = torch.linalg.solve(H + RHO * torch.eye(P, **f64), v)
    assert torch.linalg.vector_norm(A(x) - v) <= tol * torch.linalg.vector_norm(v)
    assert torch.linalg.vector_norm(x - exact) / torch.linalg.vector_norm(exact) < 1e4 * tol


def test_indefinite_hessian_sketch_is_psd_and_pcg_solves_the_damped_system():
    H, v = indefinite(P, 3), rhs(P, 3)
    sk = sketch_of(H, rank=P, seed=3)  # full rank: the core ΩᵀHΩ is indefinite, its negative part dropped
    assert sk.dropped == 3
    assert torch.isfinite(sk.U).all() and (sk.lam >= 0).all()
    Pinv = dense(nystrom_preconditioner(sk, RHO, v), P)
    assert torch.linalg.eigvalsh(0.5 * (Pinv + Pinv.T)).min() > 0
    # rho = 0.1 > 0.05 = |lambda_min|: H + rho I is positive definite and PCG solves it exactly
    x = nystrom_pcg_ihvp(lambda u: H @ u, v, rank=4, rho=RHO, iters=5 * P, tol=1e-13,
                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x, torch.linalg.solve(H + RHO * torch.eye(P, **f64), v), rtol=1e-9, atol=1e-11)


def test_pcg_on_non_positive_definite_damped_system_stops_finite():
    # rho = 0.01 < 0.05: H + rho I has negative eigenvalues; CG truncates at non-positive curvature
    H, v = indefinite(P, 4), rhs(P, 4)
    x = nystrom_pcg_ihvp(lambda u: H @ u, v, rank=4, rho=0.01, iters=5 * P, tol=1e-13,
                         generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_float32_products_stay_accurate():
    H, v = spd(P, 5, cond=5.0), rhs(P, 5)
    rho = 1e-3
    sk = nystrom_sketch(lambda u: H.float() @ u, v.float(), rank=P, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.matrix_norm(sk.U @ torch.diag(sk.lam) @ sk.U.T - H) / torch.linalg.matrix_norm(H) < 1e-5
    x = nystrom_pcg_ihvp(lambda u: H.float() @ u, v.float(), rank=4, rho=rho, iters=50, tol=1e-6,
                         generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.solve(H + rho * torch.eye(P, **f64), v)
    assert x.dtype == torch.float32
    assert torch.linalg.vector_norm(x.double() - expected) / torch.linalg.vector_norm(expected) < 1e-5
