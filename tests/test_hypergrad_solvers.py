"""IHVP solvers against dense float64 solves on small symmetric positive definite problems.

The contract test runs every exact solver in the SOLVERS registry (a new solver without a case
fails); the reference library's CG is not an exact solver and is checked against closed forms of
its own iteration instead.
"""

import pytest
import torch

from raygen.errors import UserError
from raygen.hypergrad.hypergradient import SOLVERS
from raygen.hypergrad.sketch import randomized_nystrom_ihvp
from raygen.hypergrad.solvers import (
    SolverDivergence,
    cg_ihvp,
    lambda_max,
    neumann_ihvp,
    nystrom_ihvp,
    reference_cg_ihvp,
)

P = 12


def spd(p: int, seed: int, cond: float = 20.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    evals = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), p, dtype=torch.float64)
    return Q @ torch.diag(evals) @ Q.T


def rhs(p: int, seed: int) -> torch.Tensor:
    return torch.randn(p, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)


RHO = 0.1
damped = lambda H: H + RHO * torch.eye(len(H), dtype=H.dtype)
gen = lambda: torch.Generator().manual_seed(0)
# registry name -> (kwargs, the matrix the solver inverts given H): every solver's exact-answer regime
CASES = {
    "exact": (lambda: {}, lambda H: H),
    "cg": (lambda: {"iters": 3 * P, "tol": 1e-14}, lambda H: H),
    "neumann": (lambda: {"iters": 600, "alpha": 1 / 20.0}, lambda H: H),
    "nystrom": (lambda: {"rank": P, "rho": RHO, "generator": gen()}, damped),
    "randomized_nystrom": (lambda: {"rank": P, "rho": RHO, "generator": gen()}, damped),
    # rank 4 < P: the preconditioner is partial and PCG must still reach the exact answer
    "nystrom_pcg": (lambda: {"rank": 4, "rho": RHO, "iters": 3 * P, "tol": 1e-14, "generator": gen()}, damped),
}


INEXACT = {"reference_cg"}  # no regime where it solves H x = v in general: tested below on its iteration


def test_every_registered_solver_has_a_contract_case():
    assert set(CASES) | INEXACT == set(SOLVERS)
    assert not set(CASES) & INEXACT


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solver_matches_dense_solve(name, seed):
    kwargs, target = CASES[name]
    H, v = spd(P, seed), rhs(P, seed)
    x = SOLVERS[name](lambda u: H @ u, v, **kwargs())
    expected = torch.linalg.solve(target(H), v)
    assert torch.allclose(x, expected, rtol=1e-8, atol=1e-10), (x - expected).abs().max()


@pytest.mark.parametrize("solver", [nystrom_ihvp, randomized_nystrom_ihvp])
@pytest.mark.parametrize("rho", [1e-3, 0.1, 10.0])
def test_nystrom_exact_when_hessian_rank_at_most_k(solver, rho):
    g = torch.Generator().manual_seed(3)
    A = torch.randn(P, 3, generator=g, dtype=torch.float64)
    H = A @ A.T  # rank 3 <= k = 5
    v = rhs(P, 3)
    x = solver(lambda u: H @ u, v, rank=5, rho=rho, generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.solve(H + rho * torch.eye(P, dtype=H.dtype), v)
    assert torch.allclose(x, expected, rtol=1e-8, atol=1e-8 / rho)


@pytest.mark.parametrize("rank", [1, 4, 8])
def test_nystrom_woodbury_equals_direct_solve_of_low_rank_approximation(rank):
    H, v = spd(P, 4), rhs(P, 4)
    x = nystrom_ihvp(lambda u: H @ u, v, rank=rank, rho=RHO, generator=torch.Generator().manual_seed(7))
    K = torch.randperm(P, generator=torch.Generator().manual_seed(7))[:rank]  # same draw as the solver
    C, W = H[:, K], H[K][:, K]
    direct = torch.linalg.solve(C @ torch.linalg.pinv(W) @ C.T + RHO * torch.eye(P, dtype=H.dtype), v)
    assert torch.allclose(x, direct, rtol=1e-8, atol=1e-10)


def low_rank(p: int, r: int, seed: int, top: float, bottom: float) -> tuple[torch.Tensor, torch.Tensor]:
    """H = Q·diag(λ)·Qᵀ of rank r, λ log-spaced from top down to bottom, and a right-hand side."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(p, r, generator=g, dtype=torch.float64))
    lam = torch.logspace(torch.log10(torch.tensor(top)).item(), torch.log10(torch.tensor(bottom)).item(), r,
                         dtype=torch.float64)
    return (Q * lam) @ Q.T, torch.randn(p, generator=g, dtype=torch.float64)


# (top, bottom eigenvalue of H, bound): the spread makes W = H[K, K] ill conditioned (cond(W) ~ 1e12-1e13
# for 1e4..1e-8) or well conditioned (1..0.5, cond(W) ~ 1e2-1e4); at k >= rank C W⁺ Cᵀ = H exactly, so
# only round-off separates the solver from the dense solve. The textbook Woodbury core lost 1e-2 here.
@pytest.mark.parametrize("top, bottom, bound", [(1e4, 1e-8, 1e-6), (1e3, 1e-6, 1e-6), (1.0, 0.5, 1e-10)])
@pytest.mark.parametrize("extra", [0, 3])
@pytest.mark.parametrize("rho", [1e-3, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nystrom_stable_on_ill_conditioned_low_rank_plus_shift(top, bottom, bound, extra, rho, seed):
    p, r = 60, 10
    H, v = low_rank(p, r, seed, top, bottom)
    x = nystrom_ihvp(lambda u: H @ u, v, rank=r + extra, rho=rho, generator=torch.Generator().manual_seed(seed))
    expected = torch.linalg.solve(H + rho * torch.eye(p, dtype=H.dtype), v)
    assert torch.linalg.vector_norm(x - expected) / torch.linalg.vector_norm(expected) <= bound


def test_nystrom_float32_inputs_stay_accurate_at_small_rho():
    # float32 Hessian, full rank, rho = 1e-3: the float64 k x k solve keeps the error small
    H, v = spd(P, 5, cond=5.0), rhs(P, 5)
    rho = 1e-3
    x = nystrom_ihvp(lambda u: H.float() @ u, v.float(), rank=P, rho=rho, generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.solve(H + rho * torch.eye(P, dtype=H.dtype), v)
    assert x.dtype == torch.float32
    assert torch.linalg.vector_norm(x.double() - expected) / torch.linalg.vector_norm(expected) < 1e-3


@pytest.mark.parametrize("solver", [nystrom_ihvp, randomized_nystrom_ihvp])
def test_nystrom_uses_one_batched_call_for_its_k_products(solver):
    H, v = spd(P, 6), rhs(P, 6)
    calls = []

    def hvp(u):
        calls.append(u.shape)
        return H @ u

    solver(hvp, v, rank=6, rho=RHO, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1  # under vmap the closure is traced once for the whole [6, p] batch


def test_nystrom_column_choice_follows_generator():
    H, v = spd(P, 7), rhs(P, 7)
    run = lambda s: nystrom_ihvp(lambda u: H @ u, v, rank=3, rho=RHO, generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_cg_is_textbook_fast_on_well_conditioned_problem():
    # textbook CG on a cond-3 problem contracts the H-norm error by 2*((sqrt(3)-1)/(sqrt(3)+1))^5 ~ 4e-3
    # in 5 iterations; a CG that builds its direction from the old residual does not
    H, v = spd(P, 8, cond=3.0), rhs(P, 8)
    x = cg_ihvp(lambda u: H @ u, v, iters=5, tol=0.0)
    exact = torch.linalg.solve(H, v)
    assert torch.linalg.vector_norm(x - exact) / torch.linalg.vector_norm(exact) < 1e-2


def test_neumann_divergence_above_two_over_lambda_max_is_detected():
    H, v = spd(P, 9, cond=20.0), rhs(P, 9)  # lambda_max = 20
    with pytest.raises(SolverDivergence, match="alpha"):
        neumann_ihvp(lambda u: H @ u, v, iters=50, alpha=2.2 / 20.0)
    # just below the threshold it converges (slowly at the top of the spectrum, but no error)
    x = neumann_ihvp(lambda u: H @ u, v, iters=50, alpha=1.9 / 20.0)
    assert torch.isfinite(x).all()


def test_neumann_divergence_estimate_names_lambda_max():
    H, v = spd(P, 10, cond=20.0), rhs(P, 10)
    with pytest.raises(SolverDivergence) as info:
        neumann_ihvp(lambda u: H @ u, v, iters=200, alpha=0.2)  # 2/lambda_max = 0.1
    assert "0.1" in str(info.value)


@pytest.mark.parametrize("alpha", [0.01, 0.3, 1.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_cg_first_step_is_the_exact_line_search_step_for_any_alpha(alpha, seed):
    H, v = spd(P, seed), rhs(P, seed)
    x = reference_cg_ihvp(lambda u: H @ u, v, iters=1, alpha=alpha)
    assert torch.allclose(x, (v @ v) / (v @ H @ v) * v, rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha", [0.01, 0.3, 1.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_cg_second_step_stays_on_v_its_closed_form(alpha, seed):
    # its second direction is built from the OLD residual r0 = v: p1 = (1 + β)·v with β = |r1|²/|v|²,
    # r1 = v − (|v|² / (alpha·vᵀHv))·Hv, so after two steps x = (|v|² + |r1|²/(1 + β)) / vᵀHv · v
    # (textbook CG would leave span{v} after its first step)
    H, v = spd(P, seed), rhs(P, seed)
    vv, vHv = v @ v, v @ H @ v
    r1 = v - vv / (alpha * vHv) * (H @ v)
    beta = (r1 @ r1) / vv
    expected = (vv + (r1 @ r1) / (1 + beta)) / vHv * v
    x = reference_cg_ihvp(lambda u: H @ u, v, iters=2, alpha=alpha)
    assert torch.allclose(x, expected, rtol=1e-12, atol=0)


def test_reference_cg_exact_on_a_scaled_identity_at_alpha_one_and_no_nan_after():
    # H = λI, alpha = 1: the first step reaches v/λ with a zero residual; later steps must not divide 0 by 0
    v = rhs(P, 11)
    x = reference_cg_ihvp(lambda u: 4.0 * u, v, iters=5, alpha=1.0)
    assert torch.allclose(x, v / 4.0, rtol=1e-14, atol=0)


def test_reference_cg_is_not_textbook_cg():
    H, v = spd(P, 12, cond=3.0), rhs(P, 12)
    exact = torch.linalg.solve(H, v)
    err = lambda x: float(torch.linalg.vector_norm(x - exact) / torch.linalg.vector_norm(exact))
    textbook = cg_ihvp(lambda u: H @ u, v, iters=5, tol=0.0)
    reference = reference_cg_ihvp(lambda u: H @ u, v, iters=5, alpha=1.0)
    assert err(textbook) < 1e-2 < err(reference)


def test_reference_cg_rejects_bad_settings():
    H, v = spd(P, 0), rhs(P, 0)
    with pytest.raises(UserError, match="alpha"):
        reference_cg_ihvp(lambda u: H @ u, v, iters=3, alpha=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_max_power_iteration_matches_eigvalsh(seed):
    H = spd(P, seed, cond=20.0)  # eigenvalues log-spaced in [1, 20]: a gap of 20/15.5 at the top
    top = float(torch.linalg.eigvalsh(H)[-1])
    g = torch.Generator().manual_seed(seed)
    estimate, u = lambda_max(lambda w: H @ w, rhs(P, seed), iters=100, generator=g)
    assert abs(estimate - top) / top < 1e-8
    assert torch.allclose(H @ u, top * u, atol=1e-4)
    # warm-started from its own vector, one product recovers it
    again, _ = lambda_max(lambda w: H @ w, rhs(P, seed), iters=1, start=u)
    assert abs(again - top) / top < 1e-8
    # from a cold start, few products give a lower bound (Rayleigh quotient of a PSD matrix)
    rough, _ = lambda_max(lambda w: H @ w, rhs(P, seed), iters=3, generator=torch.Generator().manual_seed(seed))
    assert rough <= top * (1 + 1e-12)
