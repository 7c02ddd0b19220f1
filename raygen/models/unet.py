"""A small sigma-conditioned U-Net with optional class-label conditioning.

`SIZES` maps a size name to a factory `(in_channels, num_classes) -> UNet`: `tiny` for 8x8
images (digits), `small` for 32x32 (CIFAR-like folders). The network is the raw F_theta of the
EDM preconditioning; `raygen.models.denoiser.Denoiser` wraps it into D_theta(x_tilde, sigma).

Activations are SiLU so the network is twice differentiable: the energy variant needs
Hessian-vector products through it (MMDGS full/diagonal covariance).

Class conditioning: label embedding with one extra "null" row (index `num_classes`) so the same
network is also unconditional; label dropout during training (in the loss) teaches the null row,
which classifier-free guidance uses at sampling time.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class FourierNoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise (a scalar per sample) followed by an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=c_noise.dtype, device=c_noise.device) / half)
        angles = c_noise[:, None] * freqs[None] * 100.0  # c_noise = ln(sigma)/4 is O(1): spread it out
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """U-Net: one ResBlock per level on the way down and up, 2x down/up-sampling between levels.

    `mults[i] * channels` is the width at level i; the spatial size must be divisible by
    2**(len(mults)-1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        mults: tuple[int, ...] = (1, 2),
        emb_dim: int = 64,
        num_classes: int = 0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.noise_emb = FourierNoiseEmbedding(emb_dim)
        # row num_classes is the "no label" embedding (unconditional / dropped label)
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        widths = [channels * m for m in mults]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(c, w, emb_dim))
            c = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(c, c, emb_dim)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(c + w, w, emb_dim))
            c = w
        self.out_norm = _group_norm(c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.noise_emb(c_noise)
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(labels)
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))


SIZES: dict[str, Callable[..., UNet]] = {
    "tiny": lambda in_channels=1, num_classes=0: UNet(in_channels, 32, (1, 2), 64, num_classes),
    "small": lambda in_channels=3, num_classes=0: UNet(in_channels, 64, (1, 2, 2), 128, num_classes),
}
