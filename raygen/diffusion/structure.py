"""SADM reformulated (issue 12): a gated, bounded structure term and a distribution-level variant.

Both are raygen's own designs, not the paper's (whose exact form is not public; see
`raygen.diffusion.sadm`).

Why the current form (`raygen.diffusion.sadm`) hurts: it compares A(x0) with A(D(x_sigma)) at the
training sigmas, a third of which exceed sigma_data. There even the optimal denoiser E[x0 | x_sigma]
returns blurred images near the data mean whose affinities are all close to 1, so d has a floor
that grows with sigma (benchmarks/sadm_diagnosis.py measures it) and its gradient pulls D away from
E[x0 | x_sigma] exactly where D should not move. The gated form keeps the paired comparison only
where it can reach zero, and bounds everything an adversary could inflate:

- Gate: one shared sigma per structure batch, log-uniform in [sigma_min, sigma_max] (default
  [0.02, sigma_data]); the term is weighted by c_skip(sigma) = sigma_data^2 / (sigma^2 + sigma_data^2)
  (EDM), i.e. by how much of D's output is the input itself.
- Encoder phi (`SpectralEncoder`): convolutions and a linear head under spectral normalisation
  (Miyato et al. 2018), each conv additionally divided by its patch overlap so that the operator,
  not just the reshaped kernel, has norm <= 1; 1-Lipschitz activations; so phi is 1-Lipschitz. Its
  embeddings are L2-normalised before the similarities.
- Structure: row-wise softmax of the cosine similarities over the other rows (temperature tau,
  default 0.1): P_ij = exp(cos_ij / tau) / sum_{k != i} exp(cos_ik / tau), as in probabilistic
  knowledge transfer (Passalis & Tefas 2018).
- Distance: d = mean_i JS(P_real_i || P_fake_i) (natural log), bounded by ln 2.
- Weight: lambda chosen every step so that the structure gradient at the denoiser's output layer is
  a fixed fraction `ratio` of the denoising gradient there, lambda = ratio ||g_denoise|| /
  ||g_structure|| (VQGAN's adaptive weight, Esser et al. 2021), detached. Under data parallelism
  both gradients are averaged over ranks first, so every rank uses the same lambda.
- Saturation guard: d / ln 2 is logged; above `SATURATED` the critic separates the two structures
  almost perfectly and its gradient is uninformative, which the trainer reports.

Distribution-level variant (`mmd2_unbiased`, `median_bandwidths`, `few_step_sample`): unpaired, a
few-step sampler's outputs vs real images, MMD^2 with a sum of Gaussian kernels on phi's embeddings
(bandwidths: the median pairwise distance times `scales`, detached); phi maximises it (an MMD-GAN
critic, Li et al. 2017, under the spectral norm); the denoiser gets gradients only through the
last sampler step. Its optimum is the data distribution, which no paired form can claim.

The structure batch draws its sigma and noise from its own per-step generators (`structure_noise`),
so adding the term does not shift the denoising loss's random stream: lambda = 0 (or ratio = 0)
is plain training exactly, and arms of an ablation see the same denoising noise.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from raygen.diffusion.sadm import frozen, gather
from raygen.seeds import stream_seed

LN2 = math.log(2.0)
SATURATED = 0.9  # d / ln 2 above this: the critic separates the structures almost perfectly


class _OverlapScaled(nn.Module):
    """A spectrally normalised conv divided by sqrt(max patches covering one input pixel): with the
    reshaped kernel's norm <= 1, ||conv x||^2 = sum_p ||W P_p x||^2 <= overlap * ||x||^2."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = spectral_norm(conv)
        k, s = conv.kernel_size[0], conv.stride[0]
        self.scale = 1.0 / math.ceil(k / s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.conv(x)


class SpectralEncoder(nn.Module):
    """1-Lipschitz image encoder (L2 norms): the structure critic of the gated form."""

    def __init__(self, in_channels: int = 1, width: int = 32, embed_dim: int = 64):
        super().__init__()
        act = nn.LeakyReLU(0.2)  # 1-Lipschitz (SiLU's slope exceeds 1)
        # no biases: phi is then positively homogeneous, so the contraction the norm bound imposes
        # scales every embedding alike and leaves the cosines (all the structure sees) untouched
        self.net = nn.Sequential(
            _OverlapScaled(nn.Conv2d(in_channels, width, 3, padding=1, bias=False)), act,
            _OverlapScaled(nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False)), act,
            _OverlapScaled(nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2, bias=False)), act,
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            spectral_norm(nn.Linear(2 * width, embed_dim, bias=False)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ------------------------------------------------------------------ structure and distances


def softmax_structure(z: torch.Tensor, tau: float) -> torch.Tensor:
    """log P, shape [n, n - 1]: row i is log softmax_k(cos(z_i, z_k) / tau) over the other rows k != i."""
    u = nn.functional.normalize(z, dim=1)
    n = u.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=u.device)
    s = (u @ u.T)[off_diagonal].view(n, n - 1) / tau
    return s.log_softmax(dim=1)


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Row-wise Jensen-Shannon divergence (natural log) of distributions given by their logs; <= ln 2."""
    log_m = torch.logaddexp(log_p, log_q) - LN2
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return 0.5 * (kl_pm + kl_qm)


def js_structure_distance(z_real: torch.Tensor, z_fake: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """d = mean over rows of JS(P_real_i || P_fake_i); 0 for identical structures, <= ln 2."""
    return js_divergence(softmax_structure(z_real, tau), softmax_structure(z_fake, tau)).mean()


def median_bandwidths(z_x: torch.Tensor, z_y: torch.Tensor, scales=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """Gaussian kernel bandwidths: the median pairwise distance of the pooled set times `scales` (no gradient)."""
    with torch.no_grad():
        z = torch.cat([z_x, z_y])
        d = torch.cdist(z, z)
        n = z.shape[0]
        median = d[~torch.eye(n, dtype=torch.bool, device=z.device)].median().clamp_min(1e-6)
    return median * torch.as_tensor(scales, dtype=z.dtype, device=z.device)


def mmd2_unbiased(z_x: torch.Tensor, z_y: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012) with k = sum_b exp(-|a - c|^2 / (2 b^2)); differentiable."""
    def k(a, c):
        d2 = torch.cdist(a, c).pow(2)[..., None]
        return torch.exp(-d2 / (2 * bandwidths**2)).sum(-1)

    m, n = z_x.shape[0], z_y.shape[0]
    kxx, kyy = k(z_x, z_x), k(z_y, z_y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2 * k(z_x, z_y).mean()


# ------------------------------------------------------------------ gate and weight


def structure_noise(key: tuple[int, ...], rank: int, shape, sigma_min: float, sigma_max: float,
                    dtype=torch.float32) -> tuple[float, torch.Tensor]:
    """(sigma, eps) of one structure batch: sigma log-uniform in [sigma_min, sigma_max] from a stream
    keyed by `key` only (shared by all ranks: one sigma for the global batch), eps from (key, rank)."""
    g = torch.Generator().manual_seed(stream_seed(*key))
    sigma = sample_log_uniform(1, sigma_min, sigma_max, g).item()
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(stream_seed(*key, rank)), dtype=dtype)
    return sigma, eps


def sample_log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """n draws with log(sigma) uniform on [log low, log high]."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def c_skip(sigma: float, sigma_data: float) -> float:
    """EDM's skip weight sigma_data^2 / (sigma^2 + sigma_data^2): the share of D's output that is its input."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def _rank_mean(g: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        g = g.clone()
        dist.all_reduce(g)
        g /= dist.get_world_size()
    return g


def adaptive_lambda(loss_denoise: torch.Tensor, loss_structure: torch.Tensor, last_layer: torch.Tensor,
                    ratio: float, max_lambda: float = 1e4) -> torch.Tensor:
    """lambda = ratio ||dL_denoise/dW|| / ||dd/dW|| at the output layer W (detached), so that
    ||d(lambda d)/dW|| = ratio ||dL_denoise/dW||; clamped to [0, max_lambda] for a vanishing d."""
    g_denoise = _rank_mean(torch.autograd.grad(loss_denoise, last_layer, retain_graph=True)[0])
    g_structure = _rank_mean(torch.autograd.grad(loss_structure, last_layer, retain_graph=True)[0])
    lam = ratio * g_denoise.norm() / g_structure.norm().clamp_min(1e-12)
    return lam.clamp(0.0, max_lambda).detach()


# ------------------------------------------------------------------ the term the trainer adds


def gated_structure_term(
    denoiser, encoder: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, loss_denoise: torch.Tensor,
    last_layer: torch.Tensor, *, sigma: float, eps: torch.Tensor, sigma_data: float, ratio: float,
    tau: float = 0.1, critic=None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The gated, bounded structure term lambda c_skip(sigma) d for the denoiser's loss, and its logs.

    `critic(x0, x_hat_detached)` (optional) updates the encoder first (it maximises d); the term is
    then computed with the encoder frozen. `encoder` is the plain module (no DDP wrapper)."""
    x_hat = denoiser(x0 + sigma * eps.to(x0.device), torch.full((x0.shape[0],), sigma, device=x0.device), labels)
    if critic is not None:
        critic(x0, x_hat.detach())
    with frozen(encoder):
        with torch.no_grad():
            z_real = encoder(x0)
        d = js_structure_distance(gather(z_real), gather(encoder(x_hat)), tau)
    weighted = c_skip(sigma, sigma_data) * d
    lam = adaptive_lambda(loss_denoise, weighted, last_layer, ratio)
    saturation = float(d.detach()) / LN2
    return lam * weighted, {"structure_sigma": sigma, "structure_js": float(d.detach()), "lambda_t": float(lam),
                            "critic_saturated": float(saturation > SATURATED)}


def js_critic_loss(encoder: nn.Module, x0: torch.Tensor, x_hat: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """-d for the encoder to minimise (one forward on both batches, as `sadm.discriminator_loss`)."""
    z = encoder(torch.cat([x0, x_hat.detach()]))
    z_real, z_fake = z.chunk(2)
    return -js_structure_distance(gather(z_real), gather(z_fake), tau)


@torch.no_grad()
def few_step_sample(denoiser, x_init: torch.Tensor, sigmas: list[float], labels=None) -> torch.Tensor:
    """Euler probability-flow steps along `sigmas` (decreasing, > 0) without gradients; the caller
    then takes the last step D(x, sigmas[-1]) with gradients (the distribution-level variant)."""
    x = x_init
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * (x - denoiser(x, s, labels)) / s
    return x


def _mmd(encoder: nn.Module, x0: torch.Tensor, x_gen: torch.Tensor, scales) -> torch.Tensor:
    z_real, z_gen = gather(encoder(x0)), gather(encoder(x_gen))
    return mmd2_unbiased(z_real, z_gen, median_bandwidths(z_real, z_gen, scales))


def mmd_structure_term(encoder: nn.Module, x0: torch.Tensor, x_gen: torch.Tensor, scales=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """MMD^2 between phi(real) and phi(generated) over the global batch, phi frozen (the denoiser minimises it)."""
    with frozen(encoder):
        return _mmd(encoder, x0, x_gen, scales)


def mmd_critic_loss(encoder: nn.Module, x0: torch.Tensor, x_gen: torch.Tensor, scales=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """-MMD^2 for the encoder to minimise (x_gen detached)."""
    return -_mmd(encoder, x0, x_gen.detach(), scales)
