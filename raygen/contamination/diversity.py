"""Diversity of the replacement images: improved precision/recall against the real training set,
and whether their labels agree with what a classifier trained on the real data sees in them.

Features are the penultimate layer of raygen's classifier trained on the real training split
(`raygen.metrics.train_feature_classifier`), so no pretrained network is needed. The held-back
real images are scored the same way: they show what "different but real" looks like, the yardstick
for the generated images (the paper found generated data high-precision, low-recall).
"""

from __future__ import annotations

import numpy as np
import torch

from raygen.contamination.downstream import accuracy
from raygen.metrics import sample_quality, train_feature_classifier

# Below this, a classifier trained on the real data disagrees with most generated labels: the labels
# (or class folders) likely do not match the real classes, and the study's accuracies mean little.
MIN_LABEL_AGREEMENT = 0.5


def diversity(real: np.ndarray, real_labels: np.ndarray, replacements: dict[str, tuple[np.ndarray, np.ndarray]], *,
              generator: torch.Generator, steps: int, k: int) -> dict[str, dict[str, float]]:
    """{name: {fd, kid, kid_std, precision, recall, label_agreement}} of each replacement set
    (images, labels) vs the `real` images; label_agreement = the real-data classifier's accuracy
    on the set's own labels. Every set's KID uses the same draws (from the generator's state on
    entry), so the sets are compared on equal terms."""
    start = generator.get_state()
    x, y = torch.from_numpy(real), torch.from_numpy(real_labels)
    model = train_feature_classifier(x, y, generator=generator, steps=steps)
    out = {}
    for name, (images, labels) in replacements.items():
        imgs, kid_draws = torch.from_numpy(images), torch.Generator()
        kid_draws.set_state(start)
        out[name] = {**sample_quality(model, x, imgs, generator=kid_draws, k=k),
                     "label_agreement": accuracy(model, imgs, torch.from_numpy(np.asarray(labels, np.int64)))}
    return out
