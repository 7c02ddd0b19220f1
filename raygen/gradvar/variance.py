"""Per-element variance of a gradient estimator at fixed parameters (Tokui & Sato, ICML 2017, §5).

The variance comes from both mini-batch selection and latent sampling: each of M evaluations draws
a fresh mini-batch (fresh binarisation) and fresh latent noise, parameters and baselines fixed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from raygen.errors import UserError


def welford(samples: Iterable[Tensor]) -> tuple[int, Tensor, Tensor]:
    """(n, mean, unbiased variance) of a stream of equally shaped tensors in one pass.

    Welford (1962): n ← n + 1, δ = x − μ, μ ← μ + δ / n, M₂ ← M₂ + δ (x − μ); var = M₂ / (n − 1).
    """
    n, mean, m2 = 0, None, None
    for x in samples:
        n += 1
        if mean is None:
            mean, m2 = x.clone(), torch.zeros_like(x)
            continue
        delta = x - mean
        mean += delta / n
        m2 += delta * (x - mean)
    if n < 2:
        raise UserError(f"a variance needs at least 2 samples, got {n}; set variance_batches >= 2")
    return n, mean, m2 / (n - 1)
