"""Estimators of the inference-network gradient of the ELBO, in one framework (Tokui & Sato, ICML 2017).

Every estimator here is written as per-unit *logit signals* s_l [B, H_l]: the estimate of
∇_φ ELBO is ∇_φ (1/B) Σ_b Σ_l Σ_i s_{l,b,i} · η_{l,b,i}(φ) with s held fixed, η_l the logits of
q(z_l | z_{l-1}). The generative gradient, the same for every estimator, is ∇_θ (1/B) Σ_b log p(x, z).

With the local learning signal of layer l (terms of F = log p(x, z) − log q(z | x) that depend on z_l)

    L_l = log p(z_L) + Σ_{k ≥ l} [log p(z_{k-1} | z_k) − log q(z_k | z_{k-1})],

and ∂ log Bern(z; σ(η)) / ∂η = z − σ(η):

- ``lr``           s = L_l · (z_l − σ(η_l))                             (score function / REINFORCE)
- ``lr_baseline``  s = (L_l − c_l) · (z_l − σ(η_l)),  c_l ← c_l + (1 − α)(mean_b r_l − c_l), α = 0.8
- ``nvil``         s = (L_l − c_l − b_l(z_{l-1})) · (z_l − σ(η_l)), b_l an MLP (tanh) fitted by least
                   squares to L_l − c_l (Mnih & Gregor, ICML 2014); c_l tracks the residual L_l − b_l
- ``leg``          local expectation gradient (Titsias & Lázaro-Gredilla, NIPS 2015), extended to deep
                   q as in Tokui & Sato: each unit is summed out exactly under q(z_{l,i} | z_{-i}) ∝
                   q(z_{l,i} | z_{l-1}) q(z_{l+1} | z_l), the rest of the sample kept fixed:
                   s = Σ_v w(v) F(v) (v − σ(η)) over v ∈ {z_{l,i}, 1 − z_{l,i}}, F = L_l and w the conditional
- ``leg_baseline`` LEG with F = L_l − c_l (not in the paper; added here): since w ≠ σ(η) when z_{l+1}
                   depends on z_l, LEG's signal keeps a term F·(w − σ(η)) that a constant c removes
                   without bias (E[c ∇ log q(z_{l,i} | z_{l-1})] = 0)
- ``optimal``      discrete reparameterisation (Tokui & Sato, §4): with z = 1[u < σ(η)] and the entropy
                   of each layer marginalised, flip unit (l, i), re-simulate z_{>l} with the same u, and
                   s = σ(η)(1 − σ(η)) · (G_{≥l}(z_{l,i} = 1) − G_{≥l}(z_{l,i} = 0) − η), where
                   G_{≥l} = log p(z_L) + Σ_{k ≥ l} log p(z_{k-1} | z_k) + Σ_{k > l} H[q(z_k | z_{k-1})]
                   (the −η term is the direct gradient of the marginalised entropy H[q(z_l | z_{l-1})]).

The baselines c and b are state read but not changed here (`Baselines`); the caller updates them
after the step (`update_baselines`), so an estimate never uses its own sample in its baseline and
stays unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from raygen.errors import UserError
from raygen.gradvar.sbn import (SBN, Sample, bernoulli_entropy, bernoulli_log_prob, generative_terms, infer,
                                inference_terms, lecun_init, split_noise)

ESTIMATORS = ("lr", "lr_baseline", "nvil", "leg", "leg_baseline", "optimal")
MOVING_BASELINE = ("lr_baseline", "nvil", "leg_baseline")  # estimators that subtract c and update it


def check_estimator(name: str) -> None:
    if name not in ESTIMATORS:
        raise UserError(f"unknown gradient estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}")


@dataclass
class Baselines:
    """Variance-reduction state: moving averages c [L] (lr_baseline, nvil) and NVIL's input-dependent nets."""

    c: Tensor
    nets: nn.ModuleList | None = None
    alpha: float = 0.8


def make_baselines(model: SBN, estimator: str, *, hidden: int = 100, alpha: float = 0.8,
                   generator: torch.Generator | None = None) -> Baselines:
    """Zero moving averages; for ``nvil`` one MLP b_l(z_{l-1}) per latent layer (inputs: x − x̄, z_1, ...),
    initialised from `generator` (required for nvil); on the model's device."""
    check_estimator(estimator)
    if hidden < 1:
        raise UserError(f"the NVIL baseline needs >= 1 hidden units, got {hidden}; set baseline_hidden >= 1")
    dtype, device = model.prior_logit.dtype, model.prior_logit.device
    L = len(model.latent_sizes)
    nets = None
    if estimator == "nvil":
        parents = [model.visible] + model.latent_sizes[:-1]
        nets = nn.ModuleList(nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, 1)) for n in parents)
        if generator is None:
            raise ValueError("the nvil baseline nets need a torch generator for their initial weights")
        lecun_init(nets, generator)  # on the CPU, then moved: the same weights on any device
        nets.to(device, dtype)
    return Baselines(c=torch.zeros(L, dtype=dtype, device=device), nets=nets, alpha=alpha)


def local_signals(model: SBN, sample: Sample) -> list[Tensor]:
    """[L_1, ..., L_L] per example ([B] each), detached."""
    with torch.no_grad():
        gen, inf = generative_terms(model, sample.z), inference_terms(sample)
        L = len(inf)
        out, acc = [], gen[L]
        for l in range(L, 0, -1):
            acc = acc + gen[l - 1] - inf[l - 1]
            out.append(acc)
        return out[::-1]


def _flips(z: Tensor) -> Tensor:
    """[B, H] -> [B, H, H]: row i is z with unit i flipped."""
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    return z[:, None, :] + (1 - 2 * z)[:, None, :] * eye


def _parent_logits(model: SBN, sample: Sample, layer: int) -> Tensor:
    """Logits of z_l's own generative factor: p(z_l | z_{l+1}), or the prior for the top layer."""
    if layer == len(sample.z) - 1:
        return model.prior_logit.expand_as(sample.z[layer])
    return model.generative_logits(layer + 1, sample.z[layer + 1])


def _leg_signal(model: SBN, sample: Sample, layer: int, F_cur: Tensor) -> Tensor:
    z, eta = sample.z[layer], sample.eta[layer].detach()
    zf = _flips(z)
    L = len(sample.z) - 1
    flip = 1 - z
    d_q = bernoulli_log_prob(eta, flip) - bernoulli_log_prob(eta, z)  # Δ log q(z_l | z_{l-1}), unit i only
    parent = _parent_logits(model, sample, layer)
    d_p = bernoulli_log_prob(parent, flip) - bernoulli_log_prob(parent, z)  # Δ log p(z_l | z_{l+1})
    below = sample.z[layer - 1][:, None, :]
    d_child = (bernoulli_log_prob(model.generative_logits(layer, zf), below).sum(-1)
               - bernoulli_log_prob(model.generative_logits(layer, z), sample.z[layer - 1]).sum(-1)[:, None])
    d_next = torch.zeros_like(z)
    if layer < L:  # q(z_{l+1} | z_l) depends on z_l too: it enters both F and the conditional of z_{l,i}
        above = sample.z[layer + 1]
        d_next = (bernoulli_log_prob(model.eta(layer + 1, zf), above[:, None, :]).sum(-1)
                  - bernoulli_log_prob(sample.eta[layer + 1].detach(), above).sum(-1)[:, None])
    F_flip = F_cur[:, None] + d_child + d_p - d_q - d_next
    w_cur = torch.sigmoid(-(d_q + d_next))  # q(z_{l,i} = current | everything else)
    q1 = torch.sigmoid(eta)
    return w_cur * F_cur[:, None] * (z - q1) + (1 - w_cur) * F_flip * (flip - q1)


def _downstream(model: SBN, sample: Sample, layer: int) -> Tensor:
    """G_{≥l} of the current sample [B] (see module docstring)."""
    gen = generative_terms(model, sample.z)
    L = len(sample.z) - 1
    G = gen[L] + sum(gen[k - 1] for k in range(layer, L + 1))
    return G + sum(bernoulli_entropy(sample.eta[k].detach()).sum(-1) for k in range(layer + 1, L + 1))


def _optimal_signal(model: SBN, sample: Sample, layer: int) -> Tensor:
    z, eta = sample.z[layer], sample.eta[layer].detach()
    B, H = z.shape
    L = len(sample.z) - 1
    zk = _flips(z).reshape(B * H, H)
    G = bernoulli_log_prob(model.generative_logits(layer, zk), sample.z[layer - 1].repeat_interleave(H, 0)).sum(-1)
    for k in range(layer + 1, L + 1):  # re-simulate downstream with the sample's own uniforms
        eta_k = model.eta(k, zk)
        G = G + bernoulli_entropy(eta_k).sum(-1)
        z_next = (sample.u[k - 1].repeat_interleave(H, 0) < torch.sigmoid(eta_k)).to(z.dtype)
        G = G + bernoulli_log_prob(model.generative_logits(k, z_next), zk).sum(-1)
        zk = z_next
    G = G + bernoulli_log_prob(model.prior_logit.expand_as(zk), zk).sum(-1)
    delta = (2 * z - 1) * (_downstream(model, sample, layer)[:, None] - G.reshape(B, H))  # G(1) − G(0)
    q1 = torch.sigmoid(eta)
    return q1 * (1 - q1) * (delta - eta)


@dataclass
class Estimate:
    """One batch's estimate: `objective` whose gradient is the ELBO gradient estimate (θ and φ), the
    local signals L_l, the NVIL predictions b_l (with gradient, for their least-squares fit) and F."""

    objective: Tensor
    local: list[Tensor]
    predictions: list[Tensor] | None
    elbo: Tensor


def estimate(model: SBN, x: Tensor, u: Tensor, estimator: str, baselines: Baselines) -> Estimate:
    """Simulate z from noise u [B, ΣH] and build the surrogate objective of the chosen estimator."""
    check_estimator(estimator)
    sample = infer(model, x, split_noise(model, u))
    local = local_signals(model, sample)
    predictions = None
    if baselines.nets is not None and estimator == "nvil":
        parents = [x - model.x_mean] + sample.z[1:-1]
        predictions = [net(p).squeeze(-1) for net, p in zip(baselines.nets, parents)]
    with torch.no_grad():
        signals = []
        for l in range(1, len(sample.z)):
            z, q1 = sample.z[l], torch.sigmoid(sample.eta[l].detach())
            if estimator in ("leg", "leg_baseline"):
                F = local[l - 1] - (baselines.c[l - 1] if estimator == "leg_baseline" else 0)
                signals.append(_leg_signal(model, sample, l, F))
            elif estimator == "optimal":
                signals.append(_optimal_signal(model, sample, l))
            else:
                r = local[l - 1]
                if estimator in MOVING_BASELINE:
                    r = r - baselines.c[l - 1]
                if predictions is not None:
                    r = r - predictions[l - 1].detach()
                signals.append(r[:, None] * (z - q1))
    B = x.shape[0]
    log_p = sum(generative_terms(model, sample.z))  # z carries no gradient: this is ∇_θ log p(x, z)
    surrogate = sum((s * sample.eta[l]).sum() for l, s in enumerate(signals, start=1))
    return Estimate(objective=log_p.mean() + surrogate / B, local=local, predictions=predictions,
                    elbo=(log_p - sum(inference_terms(sample))).detach())


def baseline_loss(est: Estimate, baselines: Baselines) -> Tensor | None:
    """NVIL's least-squares fit of b_l to the centred signal L_l − c_l (None without input-dependent baselines)."""
    if est.predictions is None:
        return None
    return sum(((r - c - b) ** 2).mean() for r, c, b in zip(est.local, baselines.c, est.predictions))


def update_baselines(est: Estimate, baselines: Baselines) -> None:
    """c_l ← c_l + (1 − α)(mean_b r_l − c_l), r_l = L_l (− b_l for NVIL): after the step, so no estimate
    uses its own sample in its baseline."""
    with torch.no_grad():
        for l, r in enumerate(est.local):
            if est.predictions is not None:
                r = r - est.predictions[l].detach()
            baselines.c[l] += (1 - baselines.alpha) * (r.mean() - baselines.c[l])


def inference_gradient(model: SBN, x: Tensor, u: Tensor, estimator: str, baselines: Baselines) -> Tensor:
    """The estimator's ∇_φ ELBO for the batch (mean over examples), flattened over inference parameters."""
    est = estimate(model, x, u, estimator, baselines)
    grads = torch.autograd.grad(est.objective, model.inference_parameters())
    return torch.cat([g.reshape(-1) for g in grads])
