"""SADM: structure-guided adversarial training of diffusion models (Yang et al., CVPR 2024).

What is known of the paper here: its abstract and public figure captions (the method section was
not available offline, and no code is public). From them: the denoiser minimises a structural
distance between generated and real samples in a learned manifold space, the encoder (the
discriminator) maximises it, the comparison is between batches through an affinity matrix, and the
per-sample loss is the weighted denoising loss. The affinity, distance, encoder, lambda, sigma
weighting and update ratio are NOT known; everything below is raygen's guess, not the paper's
method:

- Encoder / discriminator phi: a small conv net (`StructureEncoder`) mapping clean images (real
  x0 and denoised x_hat = D(x_tilde, sigma)) to `embed_dim` embeddings. It sees no sigma: it judges
  denoised images as images.
- Structure: the cosine-similarity affinity matrix A_ij = <z_i, z_j> / (|z_i| |z_j|) of a batch.
  Real and denoised batches are paired (x_hat_i denoises x0_i), so A(real) and A(denoised) are
  compared entry by entry.
- Distance: d = mean over off-diagonal pairs (i != j) of (A_real_ij - A_fake_ij)^2. Bounded in
  [0, 4] because cosines are, so the maximising discriminator cannot blow it up by scaling.
- Discriminator step: minimise -d on (x0, x_hat.detach()) with its own Adam optimiser;
  `disc_steps` updates per denoiser update on the same batch (default 1).
- Denoiser step: minimise L_denoise + lambda_t d with phi frozen (phi's parameters do not get
  gradients). lambda_t = lambda min(1, step / warmup): a linear warm-up (default 200 steps) so the
  adversary only acts once the denoiser produces images worth comparing. Default lambda = 0.1.
- lambda = 0 is plain denoising training exactly: phi's forward uses no randomness and its
  parameters are initialised from their own seed, so the denoiser's random stream and weights are
  identical (tests/test_diffusion_sadm.py checks it bit for bit); the discriminator is still trained
  so d is logged in both arms of the ablation.
- Data parallel: embeddings are gathered across workers with a differentiable all-gather, so the
  structure spans the global batch. Its backward sums the gradient of d from every rank onto the
  owner; after DDP's gradient averaging that is exactly the gradient of
  mean(L_denoise) + lambda d(global batch) (tests check 2 gloo processes against 1 process).

This is the "current" form (`sadm_form: current`). Its paired comparison has a floor at
sigma >= sigma_data that even the exact posterior-mean denoiser does not get under
(benchmarks/sadm_diagnosis.py); the gated, bounded form is `raygen.diffusion.structure`, raygen's
own design. Neither improved sample FD over plain training in benchmarks/sadm_quality.py, but that
study fine-tuned unconverged bases for 100 steps: a verdict on these guesses at that length, not
on the paper's method.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
import torch.distributed as dist


class StructureEncoder(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 32, embed_dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _AllGather(torch.autograd.Function):
    """Differentiable all-gather of equal-sized per-rank tensors. Backward: the gradient of the
    gathered tensor is summed over ranks (every rank computes the loss from it) and each rank
    keeps its own rows."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        ctx.rows = z.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather(z: torch.Tensor) -> torch.Tensor:
    """Concatenate z over all ranks (rank order), differentiably; identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return _AllGather.apply(z)


def affinity(z: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity matrix of the rows of z."""
    u = nn.functional.normalize(z, dim=1)
    return u @ u.T


def structure_distance(z_real: torch.Tensor, z_fake: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal difference of the two batches' affinity matrices."""
    diff = affinity(z_real) - affinity(z_fake)
    n = diff.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=diff.device)
    return diff[off_diagonal].pow(2).mean()


def discriminator_loss(encoder: nn.Module, x0: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """-d for the discriminator to minimise. One forward on both batches (one DDP forward per step)."""
    z = encoder(torch.cat([x0, x_hat.detach()]))
    z_real, z_fake = z.chunk(2)
    return -structure_distance(gather(z_real), gather(z_fake))


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Inside, `module`'s parameters take no gradient (their flags are restored after)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def adversarial_loss(encoder: nn.Module, x0: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """d for the denoiser to minimise; phi is frozen (pass the unwrapped module, not its DDP wrapper)."""
    with frozen(encoder):
        with torch.no_grad():
            z_real = encoder(x0)
        return structure_distance(gather(z_real), gather(encoder(x_hat)))


def lambda_at(step: int, lam: float, warmup: int) -> float:
    return lam if warmup <= 0 else lam * min(1.0, step / warmup)
