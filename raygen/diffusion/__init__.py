"""Diffusion training: denoising loss, SADM structure discriminator, EMA, sampler, SADM trainer.

Pure torch. `raygen.diffusion.train` is SADM's config and step on the shared scaffold
`raygen.train_loop`, whose checkpoint store talks to Ray Train when it runs inside it.
"""

from raygen.diffusion.ema import EMA
from raygen.diffusion.losses import DenoisingLoss, edm_weight, sample_sigma
from raygen.diffusion.sadm import (
    StructureEncoder,
    adversarial_loss,
    affinity,
    discriminator_loss,
    gather,
    lambda_at,
    structure_distance,
)
from raygen.diffusion.sample import heun_sample, karras_sigmas

__all__ = [
    "EMA", "DenoisingLoss", "edm_weight", "sample_sigma", "StructureEncoder", "adversarial_loss", "affinity",
    "discriminator_loss", "gather", "lambda_at", "structure_distance", "heun_sample", "karras_sigmas",
]
