"""A model's second-order oracles for the samplers, chosen by its capabilities.

The capabilities are the Protocols of `raygen.models.energy` (`HasEnergy`, `HasHessian`,
`HasHVP`); `curvature(model)` is the one place that dispatches on them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch

from raygen.models.energy import HasEnergy, HasHessian, HasHVP, energy_hessian, energy_hvp
from raygen.sampling._util import matvec


class Curvature(NamedTuple):
    """A model's second-order oracles. hvp: (Hessian of log q~) v, or J^T v of the score for score-only
    models (not symmetric, but with the same diagonal). hessian: symmetric [B, d, d], None if none."""

    hvp: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]
    hessian: Callable[[torch.Tensor, float], torch.Tensor] | None


def _hessian_vp(hessian, x: torch.Tensor, sigma: float, v: torch.Tensor) -> torch.Tensor:
    return matvec(hessian(x, sigma), v.reshape(v.shape[0], -1)).reshape(v.shape)


def _score_vjp(score, x: torch.Tensor, sigma: float, v: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (Jtv,) = torch.autograd.grad((score(xg, sigma) * v).sum(), xg)
    return Jtv.detach()


def curvature(model) -> Curvature:
    """The model's curvature by capability, most direct first: hvp, hessian, energy (autograd), score."""
    if isinstance(model, HasHessian):
        hessian = model.hessian
    elif isinstance(model, HasEnergy):
        hessian = partial(energy_hessian, model.energy)
    else:
        hessian = None
    if isinstance(model, HasHVP):
        hvp = model.hvp
    elif isinstance(model, HasHessian):
        hvp = partial(_hessian_vp, model.hessian)
    elif isinstance(model, HasEnergy):
        hvp = partial(energy_hvp, model.energy)
    else:
        hvp = partial(_score_vjp, model.score)
    return Curvature(hvp, hessian)
