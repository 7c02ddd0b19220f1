"""EnergyModel: a scalar-energy network as a sampler model, with score and Hessian by autograd.

energy E(x, sigma) plays -log q~ (up to a constant), so score = -grad E and the Hessian of log q~
is -grad^2 E: symmetric by construction, which is what the full-covariance MMDGS needs.
The module-level functions work for any callable energy(x, sigma) -> [B], so samplers can use
them on models that have an `energy` method but are not EnergyModels; `energy_score` is also the
score of raygen's trained energy denoisers (`raygen.models.EnergyDenoiser`).

Model capabilities beyond score(x, sigma) are the Protocols `HasEnergy`, `HasHessian` and `HasHVP`;
`raygen.sampling.curvature.curvature(model)` is the one place that dispatches on them. This module
lives under `models` (not `sampling`) because the energy denoisers use `energy_score`: models sit
below the samplers and must not import them.

Batch invariance of a network (sample i independent of the batch) depends on its layers: BLAS
matmuls may round differently for different batch sizes. The analytic targets are invariant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

EnergyFn = Callable[[torch.Tensor, float], torch.Tensor]


@runtime_checkable
class HasEnergy(Protocol):
    """E(x, sigma) -> [B], -log q~ up to a constant: score = -grad E, a symmetric Hessian by autograd."""

    def energy(self, x: torch.Tensor, sigma: float) -> torch.Tensor: ...


@runtime_checkable
class HasHessian(Protocol):
    """The Hessian of log q~ over the flattened sample: [B, d, d]."""

    def hessian(self, x: torch.Tensor, sigma: float) -> torch.Tensor: ...


@runtime_checkable
class HasHVP(Protocol):
    """(Hessian of log q~) v, v of x's shape."""

    def hvp(self, x: torch.Tensor, sigma: float, v: torch.Tensor) -> torch.Tensor: ...


def _grad_energy(energy: EnergyFn, x: torch.Tensor, sigma: float, create_graph: bool):
    # an x that already requires grad is kept when the graph is kept, so callers can differentiate through it
    x = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(x, sigma).sum(), x, create_graph=create_graph)
    return x, g


def energy_score(energy: EnergyFn, x: torch.Tensor, sigma: float, *, create_graph: bool = False) -> torch.Tensor:
    """grad log q~ = -grad E (rows are independent, so the gradient of the batch sum is per row).

    create_graph=True keeps the graph, for training through the score or differentiating it again."""
    with torch.enable_grad():
        _, g = _grad_energy(energy, x, sigma, create_graph=create_graph)
    return -g if create_graph else -g.detach()


def energy_hvp(energy: EnergyFn, x: torch.Tensor, sigma: float, v: torch.Tensor) -> torch.Tensor:
    """(Hessian of log q~) v = -grad(grad E . v), per row, by double backward."""
    with torch.enable_grad():
        x, g = _grad_energy(energy, x, sigma, create_graph=True)
        (Hv,) = torch.autograd.grad((g * v).sum(), x)
    return -Hv.detach()


def energy_hessian(energy: EnergyFn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Hessian of log q~ for x [B, *shape] over the flattened d = prod(shape): [B, d, d].

    Row j is -grad of the j-th gradient component: d double-backward passes over the batch."""
    B = x.shape[0]
    with torch.enable_grad():
        x, g = _grad_energy(energy, x, sigma, create_graph=True)
        g = g.reshape(B, -1)
        d = g.shape[1]
        rows = [
            torch.autograd.grad(g[:, j].sum(), x, retain_graph=j < d - 1)[0].reshape(B, d)
            for j in range(d)
        ]
    H = -torch.stack(rows, dim=1).detach()
    return 0.5 * (H + H.transpose(1, 2))  # exact symmetry (double backward may differ in the last bit)


class EnergyModel(nn.Module):
    """Wraps net(x, sigma) -> [B] (an energy, i.e. -log q~ up to a constant)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def energy(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.net(x, sigma)

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.energy(x, sigma)

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return energy_score(self.energy, x, sigma)

    def hvp(self, x: torch.Tensor, sigma: float, v: torch.Tensor) -> torch.Tensor:
        return energy_hvp(self.energy, x, sigma, v)

    def hessian(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return energy_hessian(self.energy, x, sigma)
