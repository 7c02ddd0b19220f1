"""Nonlinear ICA by generalized contrastive learning (Hyvärinen, Sasaki & Turner, AISTATS 2019),
with the domain index u as the auxiliary variable, as used by Teshima et al. (ICML 2020, §5).

A classifier scores a pair (s = h(z), u) by r(s, u) = Σ_d ψ_d(s_d, u), one small MLP ψ_d per
component with two hidden ReLU layers as in the reference code (1 → hidden → hidden → K domain
scores, the u-th is taken). It is trained together with h to tell
true pairs (h(z), u) from pairs with a uniformly drawn wrong domain u' ≠ u by the logistic loss

    L = mean[ softplus(−r(h(z), u)) + softplus(r(h(z), u')) ].

Because r is a sum of per-component terms, the optimum makes the components of h(z) conditionally
independent given u, i.e. h recovers f⁻¹ up to componentwise invertible maps (GCL's
identifiability result when the component laws vary enough across domains).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from raygen.cmt.inn import InvertibleNet


class ComponentwiseClassifier(nn.Module):
    """r(s, u) = Σ_d ψ_d(s_d)[u]; the D one-input MLPs (two hidden layers) are evaluated together as batched tensors."""

    def __init__(self, dim: int, n_domains: int, hidden: int, generator: torch.Generator):
        super().__init__()

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / fan_in**0.5  # nn.Linear's default init, drawn from our generator
            return nn.Parameter((torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)

        self.w1, self.b1 = uniform(dim, hidden, fan_in=1), uniform(dim, hidden, fan_in=1)
        self.w2, self.b2 = uniform(dim, hidden, hidden, fan_in=hidden), uniform(dim, hidden, fan_in=hidden)
        self.w3, self.b3 = uniform(dim, hidden, n_domains, fan_in=hidden), uniform(dim, n_domains, fan_in=hidden)

    def forward(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        hid = torch.relu(s[:, :, None] * self.w1 + self.b1)  # [N, D, H]
        hid = torch.relu(torch.einsum("ndh,dhj->ndj", hid, self.w2) + self.b2)  # [N, D, H]
        scores = torch.einsum("ndh,dhk->nk", hid, self.w3) + self.b3.sum(0)  # Σ_d ψ_d(s_d): [N, K]
        return scores.gather(1, u[:, None])[:, 0]


def wrong_domains(u: torch.Tensor, n_domains: int, generator: torch.Generator) -> torch.Tensor:
    """For each u, a domain drawn uniformly from the other K − 1."""
    shift = torch.randint(1, n_domains, u.shape, generator=generator)
    return (u + shift) % n_domains


def gcl_loss(h: InvertibleNet, classifier: ComponentwiseClassifier, z: torch.Tensor, u: torch.Tensor,
             u_wrong: torch.Tensor) -> torch.Tensor:
    s, _ = h(z)
    return (F.softplus(-classifier(s, u)) + F.softplus(classifier(s, u_wrong))).mean()


def train_gcl(h: InvertibleNet, z: torch.Tensor, u: torch.Tensor, *, n_domains: int, classifier_hidden: int,
              lr: float, weight_decay: float, batch_size: int, epochs: int, generator: torch.Generator,
              on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train h (in place) and a fresh classifier by Adam on the GCL loss; return the mean loss per epoch.

    ActNorm is initialised on z first. The classifier's init, the mini-batch shuffles (without
    replacement; the last partial batch is dropped, as in the reference) and the wrong domains are
    drawn from `generator` on the CPU (u stays there) and moved to z's device, so a GPU run uses
    the CPU run's draws; `on_epoch(epoch, loss)` runs after every epoch.
    """
    if n_domains < 2:
        raise ValueError("GCL needs at least 2 domains to contrast")
    g = generator
    device = z.device
    classifier = ComponentwiseClassifier(z.shape[1], n_domains, classifier_hidden, g).to(device)
    h.initialize(z)
    params = list(h.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    batch_size = min(batch_size, z.shape[0])
    history = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(z.shape[0], generator=g)
        total, batches = 0.0, 0
        for start in range(0, z.shape[0] - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            u_true, u_wrong = u[idx], wrong_domains(u[idx], n_domains, g)
            loss = gcl_loss(h, classifier, z[idx.to(device)], u_true.to(device), u_wrong.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        history.append(total / batches)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history
