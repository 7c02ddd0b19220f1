"""The downstream model of one (ratio, arm, seed): a small CNN trained on the mix, scored on test sets.

Plain torch (no Ray): `raygen.workloads.study` runs one call per Tune trial. Training is
epoch-based (every mixed row seen once per epoch, in a seeded order), so the fraction of generated
rows the model sees is exactly the mix's ratio.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from raygen.models.classifier import ConvClassifier, fit_classifier


def train_downstream(images: np.ndarray, labels: np.ndarray, *, num_classes: int, generator: torch.Generator,
                     epochs: int,
                     batch_size: int, lr: float, on_epoch: Callable[[int, float, ConvClassifier], None] | None = None,
                     device="cpu") -> ConvClassifier:
    """Epoch-based training on the mix (see `fit_classifier`) on `device`; `on_epoch` after each epoch."""
    x, y = torch.from_numpy(np.asarray(images, np.float32)), torch.from_numpy(np.asarray(labels, np.int64))
    return fit_classifier(x, y, num_classes=num_classes, generator=generator, lr=lr, batch_size=batch_size, epochs=epochs,
                          on_epoch=on_epoch, device=device)


@torch.no_grad()
def accuracy(model: ConvClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)
