"""Sigmoid belief networks (Neal 1992) with a mirrored inference network, for variational learning.

Generative net p: prior p(z_L) = Bern(σ(b)), conditionals p(z_{l-1} | z_l) = Bern(σ(g_l(z_l))),
with z_0 = x. Inference net q: q(z_l | z_{l-1}) = Bern(σ(η_l)), η_l = f_l(z_{l-1}) (x centred by
the training mean in f_1). "linear" layers are affine maps; "nonlinear" ones an MLP with one tanh
hidden layer. Sizes are listed top-down as in Tokui & Sato (ICML 2017): `[16, 16, 64]` is
z_2 (16) -> z_1 (16) -> x (64).

Binary units are reparameterised through uniform noise: z = 1[u < σ(η)], u ~ U(0, 1) (Tokui &
Sato, §4). Every random draw of one example comes from that example's own seed (`example_noise`),
so an example's sample — and its gradient estimate — does not depend on its batch or position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from raygen.errors import UserError

MODELS = ("linear", "deep", "nonlinear")


def model_sizes(model: str, units: int, visible: int) -> list[int]:
    """Top-down layer sizes of the named SBN: linear 2 latent layers, deep 4, nonlinear 2 (MLP conditionals)."""
    if model not in MODELS:
        raise UserError(f"unknown SBN model {model!r}; valid models: {', '.join(MODELS)}")
    depth = 4 if model == "deep" else 2
    return [units] * depth + [visible]


def _conditional(n_in: int, n_out: int, nonlinear: bool) -> nn.Module:
    if not nonlinear:
        return nn.Linear(n_in, n_out)
    hidden = 2 * max(n_in, n_out)  # one deterministic tanh layer, wider than both ends
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def lecun_init(module: nn.Module, generator: torch.Generator) -> None:
    """LeCun-normal weights and zero biases for every Linear, drawn from `generator` (not torch's
    global generator, so a run depends only on the generator it is given)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, m.in_features ** -0.5, generator=generator)
                m.bias.zero_()


class SBN(nn.Module):
    """A generative SBN p and its inference SBN q.

    `generative[k]` maps z_{k+1} to the logits of z_k (k = 0: x), `inference[k]` maps z_k to the
    logits of z_{k+1} (k = 0: x - x_mean). `prior_logit` is b of p(z_L).
    """

    def __init__(self, sizes: list[int], *, nonlinear: bool = False, x_mean: Tensor | None = None,
                 dtype: torch.dtype = torch.float32, generator: torch.Generator):
        super().__init__()
        if len(sizes) < 2:
            raise UserError(f"an SBN needs at least one latent and one visible layer, got sizes {sizes}")
        if any(int(s) < 1 for s in sizes):
            raise UserError(f"SBN layer sizes must all be >= 1, got {sizes}; set units to a positive number")
        up = [int(s) for s in reversed(sizes)]  # bottom-up: x, z_1, ..., z_L
        self.sizes = [int(s) for s in sizes]
        self.generative = nn.ModuleList(_conditional(up[k + 1], up[k], nonlinear) for k in range(len(up) - 1))
        self.inference = nn.ModuleList(_conditional(up[k], up[k + 1], nonlinear) for k in range(len(up) - 1))
        self.prior_logit = nn.Parameter(torch.zeros(up[-1]))
        self.register_buffer("x_mean", torch.zeros(up[0]) if x_mean is None else x_mean.reshape(-1).clone())
        lecun_init(self, generator)
        self.to(dtype)

    @property
    def latent_sizes(self) -> list[int]:
        """Sizes of z_1, ..., z_L (bottom-up)."""
        return list(reversed(self.sizes[:-1]))

    @property
    def visible(self) -> int:
        return self.sizes[-1]

    def eta(self, layer: int, parent: Tensor) -> Tensor:
        """Logits η_l of q(z_l | z_{l-1}) for 1-based layer l; `parent` is z_{l-1} (x for l = 1)."""
        if layer == 1:
            parent = parent - self.x_mean
        return self.inference[layer - 1](parent)

    def generative_logits(self, layer: int, z: Tensor) -> Tensor:
        """Logits of p(z_{l-1} | z_l) given z_l."""
        return self.generative[layer - 1](z)

    def inference_parameters(self) -> list[nn.Parameter]:
        return list(self.inference.parameters())

    def generative_parameters(self) -> list[nn.Parameter]:
        return [*self.generative.parameters(), self.prior_logit]


def bernoulli_log_prob(logits: Tensor, z: Tensor) -> Tensor:
    """Elementwise log Bern(z; σ(logits)) = z·logits − softplus(logits), stable for large |logits|."""
    return z * logits - F.softplus(logits)


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """Elementwise entropy of Bern(σ(logits)): softplus(η) − σ(η)·η."""
    return F.softplus(logits) - torch.sigmoid(logits) * logits


@dataclass
class Sample:
    """One forward simulation of q for a batch: z[l] for l = 0..L (z[0] = x) and η[l] for l = 1..L (η[0] unused)."""

    z: list[Tensor]
    eta: list[Tensor]
    u: list[Tensor]


def split_noise(model: SBN, u: Tensor) -> list[Tensor]:
    """Split per-example noise [B, ΣH] into the uniforms of z_1, ..., z_L."""
    return list(torch.split(u, model.latent_sizes, dim=-1))


def infer(model: SBN, x: Tensor, u: list[Tensor]) -> Sample:
    """Ancestral sampling of q(z | x) with z_l = 1[u_l < σ(η_l)]; samples carry no gradient."""
    z, eta = [x], [x.new_zeros(0)]
    for layer, u_l in enumerate(u, start=1):
        eta_l = model.eta(layer, z[-1])
        eta.append(eta_l)
        z.append((u_l < torch.sigmoid(eta_l.detach())).to(x.dtype))
    return Sample(z, eta, u)


def generative_terms(model: SBN, z: list[Tensor]) -> list[Tensor]:
    """[log p(z_0 | z_1), ..., log p(z_{L-1} | z_L), log p(z_L)], each summed over units: [..., B]."""
    terms = [bernoulli_log_prob(model.generative_logits(l, z[l]), z[l - 1]).sum(-1) for l in range(1, len(z))]
    prior = model.prior_logit.expand_as(z[-1])
    return terms + [bernoulli_log_prob(prior, z[-1]).sum(-1)]


def inference_terms(sample: Sample) -> list[Tensor]:
    """[log q(z_1 | x), ..., log q(z_L | z_{L-1})], each summed over units: [B]."""
    return [bernoulli_log_prob(sample.eta[l], sample.z[l]).sum(-1) for l in range(1, len(sample.z))]


def elbo_terms(model: SBN, x: Tensor, u: Tensor) -> Tensor:
    """F(x, z) = log p(x, z) − log q(z | x) per example for z simulated from noise u [B, ΣH]."""
    with torch.no_grad():
        sample = infer(model, x, split_noise(model, u))
        return sum(generative_terms(model, sample.z)) - sum(inference_terms(sample))


def iw_bound(model: SBN, x: Tensor, u: Tensor) -> Tensor:
    """Importance-weighted bound log (1/K) Σ_k exp F(x, z^k) (Burda et al. 2016) per example.

    `u` is [B, K, ΣH]: K noise draws per example. K = 1 gives the ELBO's single-sample estimate.
    """
    if u.ndim != 3 or u.shape[1] < 1:
        raise UserError(f"an importance-weighted bound needs K >= 1 samples per example, got noise of shape "
                        f"{list(u.shape)}; set iw_samples to a positive number")
    B, K, _ = u.shape
    f = elbo_terms(model, x.repeat_interleave(K, 0), u.reshape(B * K, -1)).reshape(B, K)
    return torch.logsumexp(f, dim=1) - math.log(K)


def example_noise(seeds: np.ndarray | list[int], width: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> Tensor:
    """Uniform noise [B, width], row b drawn from seed b alone (on the CPU, whatever `device`)."""
    rows = np.stack([np.random.default_rng(int(s)).random(width) for s in seeds])
    return torch.from_numpy(rows).to(dtype=dtype, device=device)


def binarise(pixels: Tensor, u: Tensor) -> Tensor:
    """Bernoulli pixels with means `pixels` from uniforms u (a fresh binarisation per draw)."""
    return (u < pixels).to(pixels.dtype)


def draw_batch(pixels: Tensor, model: SBN, seeds: np.ndarray, *, draws: int = 1) -> tuple[Tensor, Tensor]:
    """Binarise each example from its own seed and draw its latent noise from the same stream.

    Returns (x [B, D], u [B, ΣH]) for draws = 1, (x [B, D], u [B, draws, ΣH]) otherwise; the
    binarisation uses the first D uniforms of the stream, the latent noise the rest.
    """
    D, width = model.visible, sum(model.latent_sizes)
    noise = example_noise(seeds, D + width * draws, dtype=pixels.dtype, device=pixels.device)
    x = binarise(pixels, noise[:, :D])
    u = noise[:, D:]
    return x, (u if draws == 1 else u.reshape(len(seeds), draws, width))


def example_seeds(rng: np.random.Generator, n: int, population: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of n examples drawn with replacement from `population` and one 63-bit seed per example,
    both from `rng` (one per training batch, variance batch or evaluation set)."""
    return rng.integers(population, size=n), rng.integers(2**63 - 1, size=n)
