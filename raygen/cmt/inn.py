"""A Glow-like invertible network h ≈ f⁻¹ for nonlinear ICA (Teshima, Sato & Sugiyama, ICML 2020, §5).

    h = C_L ∘ W_L ∘ ... ∘ C_1 ∘ W_1 ∘ A

A: ActNorm, a = (z − b)·exp(ℓ), b and ℓ set from data (zero mean, unit variance per column) then
   trained (Kingma & Dhariwal 2018, "Glow").
W: an invertible linear map x ↦ W x, initialised to a random orthogonal matrix.
C: an affine coupling, (x₁, x₂) ↦ (x₁, x₂·(1 + tanh s(x₁)) + t(x₁)) with a one-hidden-layer net for
   s and t. The scale 1 + tanh(·) ∈ (0, 2) replaces Glow's exp(·) (the paper's "non-exponential"
   Glow: it bounds how much one layer can stretch); s and t start at 0, so every coupling starts as
   the identity.

Every layer has `forward(x) -> (y, log|det ∂y/∂x|)` per row and `inverse(y)`.
"""

from __future__ import annotations

import torch
from torch import nn


class ActNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def initialize(self, z: torch.Tensor) -> None:
        """Data-dependent init: the output on z has zero mean and unit variance per column."""
        self.b.copy_(z.mean(0))
        self.log_scale.copy_(-torch.log(z.std(0, unbiased=False) + 1e-6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x - self.b) * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) + self.b


class InvertibleLinear(nn.Module):
    def __init__(self, dim: int, generator: torch.Generator):
        super().__init__()
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        self.weight = nn.Parameter(q * torch.sign(torch.diagonal(r)))  # Haar-random orthogonal

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.weight.T, torch.linalg.slogdet(self.weight)[1].expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.weight, y.T).T


class AffineCoupling(nn.Module):
    def __init__(self, dim: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.d = dim // 2
        # skip_init: nn.Linear's own init would draw from torch's global generator; ours comes below
        self.hidden = nn.utils.skip_init(nn.Linear, self.d, hidden)
        self.out = nn.utils.skip_init(nn.Linear, hidden, 2 * (dim - self.d))
        with torch.no_grad():
            bound = 1.0 / self.d**0.5  # nn.Linear's default range, drawn from our generator
            self.hidden.weight.uniform_(-bound, bound, generator=generator)
            self.hidden.bias.uniform_(-bound, bound, generator=generator)
            self.out.weight.zero_()  # s = t = 0: the coupling starts as the identity
            self.out.bias.zero_()

    def _scale_shift(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.out(torch.relu(self.hidden(x1))).chunk(2, dim=1)
        return 1 + torch.tanh(s), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.d], x[:, self.d :]
        scale, shift = self._scale_shift(x1)
        return torch.cat([x1, x2 * scale + shift], dim=1), torch.log(scale).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[:, : self.d], y[:, self.d :]
        scale, shift = self._scale_shift(y1)
        return torch.cat([y1, (y2 - shift) / scale], dim=1)


class InvertibleNet(nn.Module):
    """h: ActNorm, then `depth` × (invertible linear, affine coupling); float64 throughout."""

    def __init__(self, dim: int, depth: int, hidden: int, *, generator: torch.Generator):
        super().__init__()
        if dim < 2:
            raise ValueError("an affine coupling needs at least 2 dimensions")
        g = generator
        layers: list[nn.Module] = [ActNorm(dim)]
        for _ in range(depth):
            layers += [InvertibleLinear(dim, g), AffineCoupling(dim, hidden, g)]
        self.layers = nn.ModuleList(layers).double()

    def initialize(self, z: torch.Tensor) -> None:
        self.layers[0].initialize(z)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s = h(z) and log|det J_h(z)| per row."""
        log_det = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, s: torch.Tensor) -> torch.Tensor:
        """z = h⁻¹(s)."""
        for layer in reversed(self.layers):
            s = layer.inverse(s)
        return s
