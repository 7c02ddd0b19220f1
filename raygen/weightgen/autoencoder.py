"""The parameter autoencoder of p-diff (Wang et al. 2024, Sec. 3.2), on normalised vectors.

Training objective with noise augmentation (p-diff Eq. 4-5): for a normalised parameter vector x,

    x' = x + xi_in,  xi_in ~ N(0, sigma_in^2 I)      (sigma_in ~ 0.001)
    h  = E(x') + xi_lat, xi_lat ~ N(0, sigma_lat^2 I) (sigma_lat ~ 0.1)
    L  = || D(h) - x ||^2 (mean over entries)

so the decoder learns to map a neighbourhood of each latent to a good parameter vector, which is
what makes decoded diffusion samples usable. `kind="conv"` is p-diff's 1-D convolutional encoder
(stride-2 Conv1d stages, then a linear map to the latent; the decoder mirrors it); `kind="mlp"`
is a plain MLP. GroupNorm (one group) is used instead of p-diff's BatchNorm so that a vector's
code never depends on the other vectors in its batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.GroupNorm(1, channels), nn.LeakyReLU(0.2))


class ParamAutoencoder(nn.Module):
    def __init__(self, numel: int, latent_dim: int = 64, kind: str = "mlp", hidden: int = 256,
                 channels: tuple[int, ...] | list[int] = (16, 32, 64), kernel: int = 7,
                 input_noise: float = 0.001, latent_noise: float = 0.1):
        super().__init__()
        self.spec: dict[str, Any] = dict(numel=numel, latent_dim=latent_dim, kind=kind, hidden=hidden,
                                         channels=list(channels), kernel=kernel, input_noise=input_noise,
                                         latent_noise=latent_noise)
        self.numel, self.latent_dim, self.kind = numel, latent_dim, kind
        self.input_noise, self.latent_noise = input_noise, latent_noise
        if kind == "mlp":
            self.encoder = nn.Sequential(nn.Linear(numel, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                         nn.LeakyReLU(0.2), nn.Linear(hidden, latent_dim))
            self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                         nn.LeakyReLU(0.2), nn.Linear(hidden, numel))
        elif kind == "conv":
            stride_total = 2 ** len(channels)
            self.length = math.ceil(numel / stride_total) * stride_total  # padded length
            self.reduced = self.length // stride_total
            chans = [1, *channels]
            self.encoder = nn.Sequential(
                *[_block(nn.Conv1d(a, b, kernel, stride=2, padding=kernel // 2), b) for a, b in zip(chans, chans[1:])],
                nn.Flatten(), nn.Linear(chans[-1] * self.reduced, latent_dim))
            rev = chans[::-1]
            self.decoder_in = nn.Linear(latent_dim, rev[0] * self.reduced)
            self.decoder = nn.Sequential(
                *[_block(nn.ConvTranspose1d(a, b, kernel, stride=2, padding=kernel // 2, output_padding=1), b)
                  for a, b in zip(rev[:-2], rev[1:-1])],
                nn.ConvTranspose1d(rev[-2], 1, kernel, stride=2, padding=kernel // 2, output_padding=1))
        else:
            raise ValueError(f"autoencoder kind must be 'mlp' or 'conv', got {kind!r}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised parameter vectors [B, P] -> latents [B, latent_dim]."""
        if self.kind == "conv":
            x = nn.functional.pad(x, (0, self.length - self.numel))[:, None]
        return self.encoder(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Latents [B, latent_dim] -> normalised parameter vectors [B, P]."""
        if self.kind == "conv":
            h = self.decoder_in(h).reshape(len(h), -1, self.reduced)
            return self.decoder(h)[:, 0, :self.numel]
        return self.decoder(h)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noise-augmented reconstruction loss above; noise drawn on CPU from `generator`.
        (The loss is the forward pass so that DDP sees it and synchronises the gradients.)"""
        xi_in = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        h = self.encode(x + self.input_noise * xi_in)
        xi_lat = torch.randn(h.shape, generator=generator, dtype=h.dtype).to(h.device)
        return (self.decode(h + self.latent_noise * xi_lat) - x).pow(2).mean()
