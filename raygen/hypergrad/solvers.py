"""Inverse-Hessian-vector-product (IHVP) solvers for implicit differentiation.

Every solver takes `hvp`, a closure mapping a flat [p] vector u to H·u (it must be vmappable:
`torch.func.vmap(hvp)` over a [k, p] batch is how Nyström gets its k columns in one call), and a
right-hand side v of shape [p]; it returns an approximation of H⁻¹v (Nyström: (H + rho·I)⁻¹v).
H is assumed symmetric (a Hessian).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from raygen.errors import UserError

HVP = Callable[[torch.Tensor], torch.Tensor]


class SolverDivergence(UserError):
    """An iterative solver diverged for its settings (e.g. Neumann with alpha > 2/lambda_max)."""


def hessian_columns(hvp: HVP, coords: torch.Tensor, p: int, like: torch.Tensor) -> torch.Tensor:
    """C = H[:, coords] as a [p, k] matrix, from k Hessian-vector products in ONE vmapped call."""
    basis = torch.zeros(len(coords), p, dtype=like.dtype, device=like.device)
    basis[torch.arange(len(coords)), coords] = 1.0
    # rows of vmap(hvp)(basis) are H e_j = column j of H (H symmetric)
    return torch.func.vmap(hvp)(basis).T


def check_rank_rho(solver: str, rank: int, rho: float, p: int) -> None:
    if not 1 <= rank <= p:
        raise UserError(f"{solver} rank must be between 1 and the number of parameters ({p}), got {rank}")
    if not rho > 0:
        raise UserError(f"{solver} rho must be > 0, got {rho}")


def nystrom_ihvp(
    hvp: HVP, v: torch.Tensor, *, rank: int, rho: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(H + rho·I)⁻¹v with H replaced by its rank-k Nyström approximation C W⁺ Cᵀ (Hataya & Yamada 2023).

    C = H[:, K], W = H[K, K] for k coordinates K drawn without replacement from `generator`. The
    approximation is factored as C W⁺ Cᵀ = F Fᵀ with W = U diag(s) Uᵀ, F = C·U₊·s₊^(−1/2) over the
    positive eigenvalues of W only (H is a Hessian: W's non-positive part is round-off, or
    indefiniteness the shifted system cannot use), then solved through the thin SVD F = Q·diag(σ):
    (F Fᵀ + rho·I)⁻¹v = Q·(Qᵀv / (σ² + rho)) + (v − Q Qᵀv)/rho (`lowrank_shifted_solve`).
    The textbook Woodbury form v/rho − C·(W + CᵀC/rho)⁻¹·Cᵀv/rho² is algebraically the same but
    subtracts two nearly equal terms through a k×k matrix with W's condition number: on rank-10 H with
    cond(W) ≈ 1e12 at rho = 1e-3 it reached only 1e-3..3e-2 relative error in float64, this form ~5e-9
    (tests/test_hypergrad_solvers.py).
    Everything after the k products runs in float64 (in float32 the solve loses accuracy badly at small rho).
    """
    p = v.numel()
    check_rank_rho("nystrom", rank, rho, p)
    coords = torch.randperm(p, generator=generator)[:rank].to(v.device)
    C = hessian_columns(hvp, coords, p, v).to(torch.float64)
    W = C[coords]
    s, U = torch.linalg.eigh(0.5 * (W + W.T))  # H is symmetric; drop round-off asymmetry before eigh
    keep = s > s.abs().max() * rank * torch.finfo(torch.float64).eps
    F = (C @ U[:, keep]) / s[keep].sqrt()
    Q, sigma, _ = torch.linalg.svd(F, full_matrices=False)
    return lowrank_shifted_solve(Q, sigma**2, v.to(torch.float64), rho).to(v.dtype)


def lowrank_shifted_solve(Q: torch.Tensor, lam: torch.Tensor, v: torch.Tensor, rho: float) -> torch.Tensor:
    """(Q·diag(lam)·Qᵀ + rho·I)⁻¹v for Q [p, r] with orthonormal columns, lam >= 0: Woodbury on an orthonormal basis."""
    Qtv = Q.T @ v
    return Q @ (Qtv / (lam + rho)) + (v - Q @ Qtv) / rho


def preconditioned_cg(
    matvec: HVP,
    v: torch.Tensor,
    *,
    iters: int,
    tol: float,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Textbook (preconditioned) conjugate gradient for A x = v from x = 0; returns (x, products used).

    With z = M⁻¹r (z = r without a preconditioner): step = rᵀz / pᵀAp, x += step·p, r −= step·Ap,
    p = z_new + (r_newᵀz_new / rᵀz)·p (Saad, Iterative Methods, Alg. 9.1). It stops after `iters`
    products, when ‖r‖ ≤ tol·‖v‖ (the unpreconditioned residual, so CG and PCG stop on the same
    test), or on non-positive curvature pᵀAp ≤ 0: A is not positive definite along p, CG's step is
    undefined there, and the current iterate is returned (truncated CG, as in Newton-CG).
    """
    if iters < 1:
        raise UserError(f"cg iters must be >= 1, got {iters}")
    x = torch.zeros_like(v)
    r = v.clone()
    z = r if precondition is None else precondition(r)
    p = z.clone()
    rz = r @ z
    rr = r @ r
    stop = (tol * torch.linalg.vector_norm(v)) ** 2
    used = 0
    for _ in range(iters):
        if rr <= stop:
            break
        Ap = matvec(p)
        used += 1
        curvature = p @ Ap
        if curvature <= 0:
            break
        step = rz / curvature
        x = x + step * p
        r = r - step * Ap
        z = r if precondition is None else precondition(r)
        rz_new = r @ z
        p = z + (rz_new / rz) * p  # the NEW residual defines the next search direction
        rz = rz_new
        rr = r @ r
    return x, used


def cg_ihvp(hvp: HVP, v: torch.Tensor, *, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """Textbook conjugate gradient for H x = v, starting from x = 0 (see `preconditioned_cg`)."""
    return preconditioned_cg(hvp, v, iters=iters, tol=tol)[0]


def reference_cg_ihvp(hvp: HVP, v: torch.Tensor, *, iters: int, alpha: float) -> torch.Tensor:
    """The conjugate-gradient variant of the reference library (moskomule/hypergrad), alpha its knob.

    Not textbook CG (`cg_ihvp`), and not an exact solver: from x = 0, r = p = v, each of `iters`
    steps takes a = rᵀr / (alpha·pᵀHp), x += a·p, r_new = r − a·Hp, and builds the next direction
    from the OLD residual, p = r + (r_newᵀr_new / rᵀr)·p; it returns alpha·x. The first step is the
    exact line-search step (vᵀv / vᵀHv)·v whatever alpha is; after that alpha rescales the residual
    update and so the whole path. Kept as the paper's comparison arm (Hataya & Yamada plot Nyström's
    rho against this alpha). It stops early only at an exactly zero residual, where the reference
    would divide 0 by 0.
    """
    if iters < 1 or not alpha > 0:
        raise UserError(f"reference_cg needs iters >= 1 and alpha > 0, got iters={iters}, alpha={alpha}")
    x = torch.zeros_like(v)
    r = v.clone()
    p = v.clone()
    rr = r @ r
    for _ in range(iters):
        if rr == 0:
            break
        Hp = hvp(p)
        a = rr / (alpha * (p @ Hp))
        x = x + a * p
        r_new = r - a * Hp
        rr_new = r_new @ r_new
        p = r + (rr_new / rr) * p
        r, rr = r_new, rr_new
    return alpha * x


def lambda_max(
    hvp: HVP, like: torch.Tensor, *, iters: int, generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor]:
    """(estimate of H's largest-magnitude eigenvalue, its unit eigenvector estimate) by power iteration.

    `iters` Hessian-vector products from `start` (a previous call's vector: the Hessian moves little
    between outer steps, so a warm start needs few products) or from a Gaussian draw of `generator`.
    The estimate is the Rayleigh quotient uᵀHu of the last unit iterate: a lower bound on
    lambda_max for a positive semidefinite H, accurate when the top eigenvalue is separated.
    """
    if iters < 1:
        raise UserError(f"power iterations must be >= 1, got {iters}")
    u = torch.randn(like.shape, generator=generator, dtype=like.dtype) if start is None else start.clone()
    u = u.to(like.device) / torch.linalg.vector_norm(u)
    for _ in range(iters):
        Hu = hvp(u)
        estimate = u @ Hu
        norm = torch.linalg.vector_norm(Hu)
        if norm == 0:  # H u = 0: u is in the null space, nothing larger is visible from here
            break
        u = Hu / norm
    return float(estimate), u


def neumann_ihvp(hvp: HVP, v: torch.Tensor, *, iters: int, alpha: float) -> torch.Tensor:
    """H⁻¹v ≈ alpha·Σ_{i=0..iters} (I − alpha·H)^i v.

    The series converges only when the spectral radius of I − alpha·H is < 1, i.e. 0 < alpha <
    2/lambda_max for positive definite H. For symmetric H the term norms ‖(I − alpha·H)^i v‖ then
    never increase, so a term that grows beyond the smallest earlier one (by a 1e-3 margin for
    round-off) proves divergence: `SolverDivergence` is raised with an estimate of lambda_max
    instead of returning a meaningless sum.
    """
    if iters < 1 or not alpha > 0:
        raise UserError(f"neumann needs iters >= 1 and alpha > 0, got iters={iters}, alpha={alpha}")
    term = v.clone()
    total = v.clone()
    norm_min = prev = float(torch.linalg.vector_norm(term))
    for i in range(iters):
        term = term - alpha * hvp(term)
        total = total + term
        norm = float(torch.linalg.vector_norm(term))
        if not math.isfinite(norm) or norm > (1 + 1e-3) * norm_min:
            growth = norm / prev if prev > 0 else float("inf")
            # the term grows by |1 − alpha·lambda_max| per step, so lambda_max ≈ (1 + growth)/alpha
            raise SolverDivergence(
                f"Neumann series diverges at iteration {i + 1} (term norm grew x{growth:.3g} per step): "
                f"alpha={alpha:g} exceeds 2/lambda_max ≈ {2 * alpha / (1 + growth):.3g} "
                "(or the Hessian is not positive definite); use a smaller alpha"
            )
        norm_min = min(norm_min, norm)
        prev = norm
    return alpha * total


def exact_ihvp(hvp: HVP, v: torch.Tensor, *, max_params: int = 5000) -> torch.Tensor:
    """H⁻¹v by building the dense Hessian (p vmapped products) and solving; small p only."""
    p = v.numel()
    if p > max_params:
        raise UserError(f"the exact solver builds a dense {p}x{p} Hessian; use it for p <= {max_params} only")
    H = hessian_columns(hvp, torch.arange(p, device=v.device), p, v)
    return torch.linalg.solve(0.5 * (H + H.T), v)

