"""Corrupted copies of the real test set: the out-of-distribution probe of the study.

Each corruption is a deterministic function of the images and a seed, so every trial is scored
on identical test sets. Images stay in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raygen.seeds import Stream, torch_generator

CORRUPTIONS = ("noise", "blur", "rotate")


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    return (x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k1 = torch.exp(-t**2 / (2 * sigma**2))
    k1 = k1 / k1.sum()
    channels = x.shape[1]
    kernel = (k1[:, None] * k1[None, :]).expand(channels, 1, -1, -1)
    # replicate padding: the border keeps its brightness instead of fading to black
    return F.conv2d(F.pad(x, (radius,) * 4, mode="replicate"), kernel, groups=channels)


def rotate(x: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by +-degrees (random sign per image) about its centre; outside -> 0 (background)."""
    sign = torch.randint(0, 2, (len(x),), generator=generator).to(x.dtype) * 2 - 1
    angle = sign * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def corrupted_sets(images: torch.Tensor, *, noise_std: float, blur_sigma: float, rotate_degrees: float,
                   seed: int) -> dict[str, torch.Tensor]:
    """{"noise": ..., "blur": ..., "rotate": ...} copies of `images` [N, C, H, W]."""
    return {
        "noise": gaussian_noise(images, noise_std, torch_generator(seed, Stream.CORRUPT, 0)),
        "blur": gaussian_blur(images, blur_sigma),
        "rotate": rotate(images, rotate_degrees, torch_generator(seed, Stream.CORRUPT, 1)),
    }
