"""Small helpers shared by the samplers and targets: argument checks and batch-invariant algebra.

Batched matmul/reductions may round differently for different batch sizes (BLAS and vectorised
reductions pick kernels by shape). Sample i must not depend on the batch it is drawn in, so the
per-row algebra here uses only elementwise ops and a fixed-order sum over the feature dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raygen.errors import UserError


def rowsum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim in a fixed left-to-right order (same bits for any batch size)."""
    total = t[..., 0]
    for j in range(1, t.shape[-1]):
        total = total + t[..., j]
    return total


def matvec(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A @ v per row: A [..., d, d] (or [d, d]), v [..., d] -> [..., d], batch-size invariant."""
    return rowsum(A * v[..., None, :])


def check_sigmas(sigmas: float | Sequence[float] | torch.Tensor) -> list[float]:
    """A positive, non-increasing noise schedule as a list of floats (one value = single sigma)."""
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.flatten().tolist()
    elif isinstance(sigmas, (int, float)):
        sigmas = [sigmas]
    sigmas = [float(s) for s in sigmas]
    if not sigmas:
        raise UserError("sigmas is empty: pass one noise level or a decreasing schedule")
    if any(not s > 0 for s in sigmas):
        raise UserError(f"sigmas must all be > 0, got {sigmas}")
    if any(b > a for a, b in zip(sigmas, sigmas[1:])):
        raise UserError(f"sigmas must be non-increasing (largest first), got {sigmas}")
    return sigmas


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_batch(x_init: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> None:
    if not isinstance(x_init, torch.Tensor) or x_init.dim() < 2:
        raise UserError("x_init must be a tensor of shape [batch, *sample_shape]")
    if not x_init.is_floating_point():
        raise UserError(f"x_init must be float32 or float64, got {x_init.dtype}")
    if len(seeds) != x_init.shape[0]:
        raise UserError(
            f"seeds has {len(seeds)} entries but x_init has {x_init.shape[0]} samples: "
            "pass exactly one seed per sample"
        )
