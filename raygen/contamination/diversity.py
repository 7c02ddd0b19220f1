"""Diversity of the replacement images: improved precision/recall against the real training set.

Features are the penultimate layer of raygen's classifier trained on the real training split
(`raygen.metrics.train_feature_classifier`), so no pretrained network is needed. The held-back
real images are scored the same way: they show what "different but real" looks like, the yardstick
for the generated images (the paper found generated data high-precision, low-recall).
"""

from __future__ import annotations

import numpy as np
import torch

from raygen.metrics import sample_quality, train_feature_classifier


def diversity(real: np.ndarray, real_labels: np.ndarray, replacements: dict[str, np.ndarray], *, seed: int, steps: int, k: int) -> dict[str, dict[str, float]]:
    """{name: {fd, kid, kid_std, precision, recall}} of each replacement set vs `real` images."""
    x, y = torch.from_numpy(real), torch.from_numpy(real_labels)
    model = train_feature_classifier(x, y, seed=seed, steps=steps)
    return {name: sample_quality(model, x, torch.from_numpy(imgs), generator=torch.Generator().manual_seed(seed), k=k)
            for name, imgs in replacements.items()}
