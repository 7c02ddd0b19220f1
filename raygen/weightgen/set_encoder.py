"""Dataset encoder for D2NWG (Soro et al. 2025, Sec. 3.2), in DeepSets form (Zaheer et al. 2017).

A task's support set S [C, s, F] (s examples of each of its C classes, raw pixels) is embedded as

    e_c = mean_j phi(S[c, j])          (intra-class: invariant to the order of a class's examples)
    c   = rho([e_0, e_1, ..., e_{C-1}])  (inter-class: concatenated in label order)

Deviation from D2NWG's two stacked Set Transformers: the inter-class stage is *not* permutation
invariant, on purpose. With relabelled class-subset tasks the head's row k must predict class k,
so the embedding has to know which support set carries label k. The encoder is trained jointly
with the latent diffusion (gradients of the denoising loss flow into phi and rho).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raygen.weightgen.latent import MLP


class SetEncoder(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 64, cond_dim: int = 64):
        super().__init__()
        self.spec: dict[str, Any] = dict(feature_dim=feature_dim, num_classes=num_classes, hidden=hidden,
                                         cond_dim=cond_dim)
        self.phi = MLP([feature_dim, hidden, hidden])
        self.rho = MLP([num_classes * hidden, hidden, cond_dim])

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        """support [B, C, s, F] -> condition vectors [B, cond_dim]."""
        return self.rho(self.phi(support).mean(2).flatten(1))
