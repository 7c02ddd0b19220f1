"""Randomized Nyström sketches of a Hessian, their direct IHVP, and Nyström-preconditioned CG.

The sketch Ĥ = U·diag(Λ̂)·Uᵀ (rank k, positive semidefinite) comes from k Hessian-vector products
against a random orthonormal test matrix Ω, all in ONE `vmap(hvp)` call. It sees every direction of
H in proportion to its eigenvalue, unlike column-sampling Nyström (`solvers.nystrom_ihvp`), which
only sees the coordinates it sampled.

Two solvers use it for (H + ρI)x = v:
- `randomized_nystrom_ihvp`: the direct Woodbury solve with Ĥ in place of H (no iterations, biased
  by H − Ĥ);
- `nystrom_pcg_ihvp`: CG on the true damped system with Ĥ as the preconditioner (Frangella, Tropp &
  Udell 2023): the iterations needed depend on the effective dimension of H at ρ instead of its
  condition number, and the answer is exact to the tolerance however stale or coarse the sketch.

Indefinite Hessians (an MLP's has small negative eigenvalues): Ĥ only keeps the positive part that
the sketch sees. If the k×k core ΩᵀHΩ + νI is not positive definite, its non-positive
eigen-directions are dropped (counted in `NystromSketch.dropped`) and Λ̂ is clipped at 0, so Ĥ + ρI
and the preconditioner are always symmetric positive definite for ρ > 0. PCG itself runs on the
true H + ρI: if that is not positive definite along a search direction (ρ smaller than H's most
negative eigenvalue), it stops there and returns its current iterate (truncated CG, see
`solvers.preconditioned_cg`); nothing produces a NaN from indefiniteness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from raygen.errors import UserError
from raygen.hypergrad.solvers import HVP, check_rank_rho, lowrank_shifted_solve, preconditioned_cg


@dataclass(frozen=True)
class NystromSketch:
    """Ĥ = U·diag(lam)·Uᵀ: U [p, k] orthonormal columns, lam [k] >= 0 descending (both float64)."""

    U: torch.Tensor
    lam: torch.Tensor
    dropped: int = 0  # core eigen-directions dropped because H is not PSD on the sketched range


def nystrom_sketch(hvp: HVP, v: torch.Tensor, *, rank: int, generator: torch.Generator | None = None) -> NystromSketch:
    """Rank-k randomized Nyström approximation of H, the stable shifted construction.

    Tropp, Yurtsever, Udell & Cevher 2017 (Fixed-rank approximation of a PSD matrix from streaming
    data, Alg. 3), as used by Frangella et al. 2023 (Alg. 2.1): Ω = orth(Gaussian [p, k]), Y = HΩ,
    ν = √p·eps·‖Y‖₂, Y_ν = Y + νΩ, C = chol(ΩᵀY_ν), F = Y_ν·C⁻ᵀ, U Σ = svd(F), Λ̂ = max(Σ² − ν, 0).
    The shift ν makes the Cholesky factorisation safe when H is (numerically) low rank; eps is the
    precision of the products (float32 HVPs carry float32 error), the rest runs in float64. v only
    gives p, dtype and device. If the core is not positive definite (H indefinite), it is
    factorised by eigh instead, keeping the positive eigen-directions only (see the module docs).
    """
    p = v.numel()
    if not 1 <= rank <= p:
        raise UserError(f"nystrom sketch rank must be between 1 and the number of parameters ({p}), got {rank}")
    gaussian = torch.randn(p, rank, generator=generator, dtype=torch.float64)
    # Ω is rounded to the products' dtype once and used as such below: Y is then exactly H·Ω
    omega = torch.linalg.qr(gaussian).Q.to(device=v.device, dtype=v.dtype)
    Y = torch.func.vmap(hvp)(omega.T).T.to(torch.float64)
    omega = omega.to(torch.float64)
    nu = math.sqrt(p) * torch.finfo(v.dtype).eps * float(torch.linalg.matrix_norm(Y, 2))
    Y_nu = Y + nu * omega
    core = omega.T @ Y_nu
    core = 0.5 * (core + core.T)
    L, info = torch.linalg.cholesky_ex(core)
    dropped = 0
    if int(info) == 0:
        F = torch.linalg.solve_triangular(L, Y_nu.T, upper=False).T  # F·Fᵀ = Y_ν·core⁻¹·Y_νᵀ
    else:
        d, V = torch.linalg.eigh(core)
        keep = d > max(nu, float(d.abs().max()) * rank * torch.finfo(torch.float64).eps)
        dropped = int((~keep).sum())
        F = (Y_nu @ V[:, keep]) / d[keep].sqrt()
    U, S, _ = torch.linalg.svd(F, full_matrices=False)
    return NystromSketch(U=U, lam=(S**2 - nu).clamp_min(0.0), dropped=dropped)


def _sketch_for(hvp: HVP, v: torch.Tensor, rank: int, generator, sketch: NystromSketch | None) -> NystromSketch:
    """The given sketch (checked against p), or a fresh one."""
    if sketch is None:
        return nystrom_sketch(hvp, v, rank=rank, generator=generator)
    if sketch.U.shape[0] != v.numel():
        raise UserError(f"the Nyström sketch is for {sketch.U.shape[0]} parameters, the problem has {v.numel()}")
    return sketch


def randomized_nystrom_ihvp(
    hvp: HVP,
    v: torch.Tensor,
    *,
    rank: int,
    rho: float,
    generator: torch.Generator | None = None,
    sketch: NystromSketch | None = None,
) -> torch.Tensor:
    """(Ĥ + ρI)⁻¹v = U·(Λ̂ + ρI)⁻¹·Uᵀv + (v − UUᵀv)/ρ, Ĥ the randomized Nyström sketch of H.

    Woodbury on Ĥ = UΛ̂Uᵀ (Tropp et al. 2017; Frangella et al. 2023, §4), in float64. `sketch`
    (e.g. kept from an earlier outer step) replaces the k products of a fresh one.
    """
    check_rank_rho("randomized_nystrom", rank, rho, v.numel())
    sk = _sketch_for(hvp, v, rank, generator, sketch)
    return lowrank_shifted_solve(sk.U, sk.lam, v.to(torch.float64), rho).to(v.dtype)


def nystrom_preconditioner(sketch: NystromSketch, rho: float, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """r ↦ P⁻¹r with P⁻¹ = (λ̂_k + ρ)·U(Λ̂ + ρI)⁻¹Uᵀ + (I − UUᵀ) (Frangella et al. 2023, eq. 5.3).

    Symmetric positive definite for ρ > 0 (its eigenvalues are (λ̂_k + ρ)/(λ̂_i + ρ) on range(U)
    and 1 off it); with the exact eigendecomposition of H as the sketch, P⁻¹(H + ρI) = (λ_k + ρ)I.
    """
    U = sketch.U.to(device=like.device, dtype=like.dtype)
    lam_k = float(sketch.lam[-1]) if len(sketch.lam) else 0.0
    scale_minus_one = ((lam_k + rho) / (sketch.lam + rho) - 1.0).to(device=like.device, dtype=like.dtype)

    def apply(r: torch.Tensor) -> torch.Tensor:
        return r + U @ (scale_minus_one * (U.T @ r))

    return apply


def nystrom_pcg_ihvp(
    hvp: HVP,
    v: torch.Tensor,
    *,
    rank: int,
    rho: float,
    iters: int = 100,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
    sketch: NystromSketch | None = None,
) -> torch.Tensor:
    """(H + ρI)⁻¹v by CG preconditioned with a rank-k randomized Nyström sketch (Frangella et al. 2023).

    Runs `solvers.preconditioned_cg` on u ↦ Hu + ρu with `nystrom_preconditioner`: at most `iters`
    products after the sketch's k (one batched call), stopping at ‖r‖ ≤ tol·‖v‖. A stale `sketch`
    only slows convergence; the system solved is always the current H + ρI.
    """
    check_rank_rho("nystrom_pcg", rank, rho, v.numel())
    sk = _sketch_for(hvp, v, rank, generator, sketch)
    damped = lambda u: hvp(u) + rho * u
    return preconditioned_cg(damped, v, iters=iters, tol=tol, precondition=nystrom_preconditioner(sk, rho, v))[0]
