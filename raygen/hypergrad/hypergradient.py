"""Implicit-differentiation hypergradients with torch.func.

Bilevel problem: theta*(phi) = argmin_theta f(theta, phi) (inner), minimise g(theta*(phi), phi).
At an inner optimum the implicit function theorem gives

    ∇_phi g = ∂g/∂phi − (∂²f/∂phi∂theta) · H⁻¹ · ∂g/∂theta,   H = ∂²f/∂theta²,

with H⁻¹·∂g/∂theta from one of the IHVP solvers in SOLVERS (`raygen.hypergrad.solvers`, `.sketch`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.func import functional_call, grad, jvp

from raygen.errors import UserError
from raygen.models.params import pack, unpack
from raygen.hypergrad.sketch import nystrom_pcg_ihvp, randomized_nystrom_ihvp
from raygen.hypergrad.solvers import cg_ihvp, exact_ihvp, neumann_ihvp, nystrom_ihvp, reference_cg_ihvp

Tensors = tuple[torch.Tensor, ...]
Loss = Callable[[Tensors, Tensors], torch.Tensor]


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "nystrom": nystrom_ihvp,
    "randomized_nystrom": randomized_nystrom_ihvp,
    "nystrom_pcg": nystrom_pcg_ihvp,
    "cg": cg_ihvp,
    "reference_cg": reference_cg_ihvp,
    "neumann": neumann_ihvp,
    "exact": exact_ihvp,
}
RANDOMIZED = {"nystrom", "randomized_nystrom", "nystrom_pcg"}  # take a `generator` keyword
SKETCHED = {"randomized_nystrom", "nystrom_pcg"}  # take a reusable `sketch` keyword


def resolve_solver(solver: str | Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    if callable(solver):
        return solver
    if solver not in SOLVERS:
        raise UserError(f"unknown IHVP solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    return SOLVERS[solver]


def hypergradient(
    inner_loss: Loss,
    outer_loss: Loss,
    params: Sequence[torch.Tensor],
    hparams: Sequence[torch.Tensor],
    *,
    solver: str | Callable[..., torch.Tensor],
    **solver_kwargs,
) -> Tensors:
    """∇_phi g at theta = params (assumed an inner optimum), shaped like `hparams`.

    `inner_loss(params, hparams)` and `outer_loss(params, hparams)` take tuples of tensors and
    return scalars; they must be pure functions of their arguments (for an nn.Module use
    `functional_module`). `solver` is a name in SOLVERS or a callable `solver(hvp, v, **kw)`.
    """
    solve = resolve_solver(solver)
    params = tuple(p.detach() for p in params)
    hparams = tuple(h.detach() for h in hparams)
    theta = pack(params)
    shapes = [p.shape for p in params]

    def f(theta_flat: torch.Tensor, phi: Tensors) -> torch.Tensor:
        return inner_loss(unpack(theta_flat, shapes), phi)

    def g(theta_flat: torch.Tensor, phi: Tensors) -> torch.Tensor:
        return outer_loss(unpack(theta_flat, shapes), phi)

    grad_f_theta = grad(f, argnums=0)

    def hvp(u: torch.Tensor) -> torch.Tensor:
        # forward-over-reverse: vmappable, so Nyström can batch its k products
        return jvp(lambda t: grad_f_theta(t, hparams), (theta,), (u,))[1]

    dg_dtheta, dg_dphi = grad(g, argnums=(0, 1))(theta, hparams)
    ihvp = solve(hvp, dg_dtheta, **solver_kwargs).detach()
    # (∂²f/∂phi∂theta)·ihvp = ∇_phi <∇_theta f(theta, phi), ihvp>
    mixed = grad(lambda phi: grad_f_theta(theta, phi) @ ihvp)(hparams)
    return tuple(d - m for d, m in zip(dg_dphi, mixed))


def functional_module(model: torch.nn.Module) -> tuple[Tensors, Callable[..., torch.Tensor]]:
    """(params, apply) for an nn.Module, so losses can be pure functions of a params tuple.

    `apply(params, *inputs)` runs the module through `torch.func.functional_call` with its
    buffers (e.g. BatchNorm running statistics). The buffers are cloned on every call: torch.func
    transforms forbid in-place updates of captured tensors, so running-stat updates made inside a
    loss land on the copies and are discarded; the module's own buffers stay as they are.
    """
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone() for p in model.parameters())
    buffers = dict(model.named_buffers())

    def apply(theta: Sequence[torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(names, theta)), **{k: b.clone() for k, b in buffers.items()}}
        return functional_call(model, state, inputs)

    return params, apply
