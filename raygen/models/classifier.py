"""A small convolutional classifier whose penultimate layer is a learned feature space.

raygen trains it itself on the real data (no pretrained download) and uses `features(x)` for the
Fréchet distance, KID and precision/recall in `raygen.metrics`. Global average pooling makes it
work for any image size (8x8 digits, 32x32 folders).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class ConvClassifier(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.spec = dict(in_channels=in_channels, num_classes=num_classes, width=width, feature_dim=feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch: every row once, in a seeded order, the last batch possibly short."""
    order = torch.randperm(n, generator=generator)
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def random_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` batches of rows drawn with replacement."""
    return (torch.randint(n, (batch_size,), generator=generator) for _ in range(steps))


def carried_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` full batches from replacement-free epochs: a new seeded order when the rest of one
    cannot fill a batch (the rest is dropped)."""
    batch_size = min(batch_size, n)
    order, pos = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos:pos + batch_size]
        pos += batch_size


def train_cross_entropy(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                        batches: Iterable[torch.Tensor], after_step: Callable[[int], None] | None = None) -> float:
    """One optimiser step on the cross-entropy of each batch of rows; returns the mean loss per row.
    `after_step(step)` runs after step 1, 2, ... (the model's train/eval mode is the caller's)."""
    total, seen = 0.0, 0
    for step, idx in enumerate(batches, 1):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, seen = total + loss.item() * len(idx), seen + len(idx)
        if after_step is not None:
            after_step(step)
    return total / max(seen, 1)


def fit_classifier(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, generator: torch.Generator,
                   lr: float,
                   batch_size: int, epochs: int | None = None, steps: int | None = None,
                   on_epoch: Callable[[int, float, ConvClassifier], None] | None = None,
                   device="cpu") -> ConvClassifier:
    """Adam on cross-entropy for a ConvClassifier drawn from `generator`; returns it in eval mode.

    Batches either by `epochs` (every row once per epoch in a seeded order: the contamination
    study needs the model to see each mix's exact ratio) or by `steps` (one pass of `steps`
    batches drawn with replacement: the metrics' feature classifier). `on_epoch(epoch,
    mean_loss, model)` runs after each epoch with the model in eval mode. Init and batch order are
    drawn on the CPU, so `device` changes only where the arithmetic runs. The init and the first
    batch order both start from the generator's state (the keys of the published figures; the init
    does not advance the generator).
    """
    if (epochs is None) == (steps is None):
        raise ValueError("pass exactly one of epochs and steps")
    with torch.random.fork_rng(devices=[]):  # nn's init draws from the global RNG: fork it, leave the caller's alone
        torch.set_rng_state(generator.get_state())
        model = ConvClassifier(images.shape[1], num_classes)
    model, images, labels = model.to(device), images.to(device), labels.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(images)
    for epoch in range(1, (epochs or 1) + 1):
        batches = (epoch_batches(n, batch_size, generator) if steps is None
                   else random_batches(n, batch_size, steps, generator))
        model.train()
        mean_loss = train_cross_entropy(model, opt, images, labels, batches)
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch, mean_loss, model)
    return model
