"""Sample-quality metrics: Fréchet distance, KID, improved precision/recall, MMD, energy distance."""

from raygen.metrics.distances import energy_distance, energy_distance_unbiased, frechet_distance, frechet_gaussians, kid, mmd2_gaussian
from raygen.metrics.features import digits_reference, extract_features, sample_quality, train_feature_classifier
from raygen.metrics.precision_recall import precision_recall

__all__ = ["energy_distance", "energy_distance_unbiased", "frechet_distance", "frechet_gaussians", "kid", "mmd2_gaussian", "digits_reference",
           "extract_features", "sample_quality", "train_feature_classifier", "precision_recall"]
