"""A small convolutional classifier whose penultimate layer is a learned feature space.

raygen trains it itself on the real data (no pretrained download) and uses `features(x)` for the
Fréchet distance, KID and precision/recall in `raygen.metrics`. Global average pooling makes it
work for any image size (8x8 digits, 32x32 folders).
"""

from __future__ import annotations

import torch
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
