"""Networks: the sigma-conditioned U-Net denoiser (plain or energy) and a feature classifier."""

from raygen.models.classifier import ConvClassifier
from raygen.models.denoiser import (
                                   PIXEL_RANGE,
                                   Conditionable,
                                   Conditioned,
                                   Denoiser,
                                   EnergyConditioned,
                                   EnergyDenoiser,
                                   build_denoiser,
                                   load_denoiser,
                                   save_denoiser,
)
from raygen.models.unet import SIZES, UNet

__all__ = ["SIZES", "UNet", "Denoiser", "EnergyDenoiser", "build_denoiser", "Conditionable", "Conditioned",
           "EnergyConditioned", "PIXEL_RANGE", "load_denoiser", "save_denoiser", "ConvClassifier"]
