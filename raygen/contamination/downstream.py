"""The downstream model of one (ratio, arm, seed): a small CNN trained on the mix, scored on test sets.

Plain torch (no Ray): `raygen.workloads.study` runs one call per Tune trial. Training is
epoch-based (every mixed row seen once per epoch, in a seeded order), so the fraction of generated
rows the model sees is exactly the mix's ratio.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from raygen.models.classifier import ConvClassifier


def train_downstream(images: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int, epochs: int,
                     batch_size: int, lr: float, on_epoch: Callable[[int, float, ConvClassifier], None] | None = None
                     ) -> ConvClassifier:
    """Adam on cross-entropy; `on_epoch(epoch, mean_loss, model)` after each epoch (model in eval mode)."""
    x, y = torch.from_numpy(np.asarray(images, np.float32)), torch.from_numpy(np.asarray(labels, np.int64))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ConvClassifier(x.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch, total / len(x), model)
    return model


@torch.no_grad()
def accuracy(model: ConvClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)
