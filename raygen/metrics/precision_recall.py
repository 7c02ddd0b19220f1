"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019).

Each set's manifold is the union of balls around its points with radius = distance to the k-th
nearest other point of the same set (k = 3 by default). Precision = fraction of generated points
inside the real manifold (fidelity); recall = fraction of real points inside the generated manifold
(coverage). Computed in float64 with dense distance matrices (fine up to ~10^4 points per set).
"""

from __future__ import annotations

import torch


def _radii(f: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is its own nearest neighbour


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    inside = (torch.cdist(points, centres) <= radii[None, :]).any(dim=1)
    return float(inside.double().mean())


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    real = torch.as_tensor(real_features).detach().double().cpu()
    fake = torch.as_tensor(fake_features).detach().double().cpu()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set")
    precision = _coverage(fake, real, _radii(real, k))
    recall = _coverage(real, fake, _radii(fake, k))
    return precision, recall
