"""Learned feature space for sample-quality metrics: a classifier raygen trains on the real data.

No pretrained Inception network is downloaded; instead `train_feature_classifier` fits a small
`ConvClassifier` to the real images and labels, and `sample_quality` compares real and generated
images in its penultimate-layer features. Figures are comparable only between runs that use the
same classifier (same data, seed and steps), never with published FIDs.
"""

from __future__ import annotations

import torch

from raygen.metrics.distances import frechet_distance, kid
from raygen.metrics.precision_recall import precision_recall
from raygen.models.classifier import ConvClassifier, fit_classifier


def train_feature_classifier(
    images: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator, steps: int = 400,
    batch_size: int = 128, lr: float = 2e-3,
) -> ConvClassifier:
    """Fit a ConvClassifier to (images [N, C, H, W], labels [N]) for `steps` random batches."""
    return fit_classifier(images, labels, num_classes=int(labels.max()) + 1, generator=generator, lr=lr,
                          batch_size=batch_size, steps=steps)


@torch.no_grad()
def extract_features(model: ConvClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model.features(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)])


def sample_quality(model: ConvClassifier, real: torch.Tensor, fake: torch.Tensor, *, generator: torch.Generator,
                   k: int = 3) -> dict[str, float]:
    """Fréchet distance, KID (mean/std) and improved precision/recall of fake vs real images."""
    f_real, f_fake = extract_features(model, real), extract_features(model, fake)
    kid_mean, kid_std = kid(f_real, f_fake, generator=generator)
    precision, recall = precision_recall(f_real, f_fake, k=k)
    return {"fd": frechet_distance(f_real, f_fake), "kid": kid_mean, "kid_std": kid_std,
            "precision": precision, "recall": recall}


def digits_reference(generator: torch.Generator, steps: int = 400) -> tuple[ConvClassifier, torch.Tensor]:
    """The feature classifier fitted to all built-in digits, and those real images (the reference set)."""
    from raygen.data import digits_arrays

    images, labels = (torch.from_numpy(a) for a in digits_arrays())
    return train_feature_classifier(images, labels, generator=generator, steps=steps), images
