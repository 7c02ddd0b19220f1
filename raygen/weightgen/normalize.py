"""Z-scoring of parameter vectors over the zoo: per weight (the default for trajectory zoos) or per tensor.

Per weight (`WeightNorm`): for each coordinate j, mu_j and s_j are its mean and standard deviation
over the zoo; z_j = (theta_j - mu_j) / s_j. This keeps the zoo's spread: checkpoints of one
trajectory differ by a tiny amount per coordinate, and after per-tensor scaling 200 such heads
were 0.009 apart (under the autoencoder's latent noise of 0.1), so the AE learned their mean only.

Per tensor (`TensorNorm`, p-diff's code normalises each tensor): mu_k and s_k are the mean and
standard deviation over the zoo of all entries of tensor k; z = (theta - mu_k) / s_k entrywise.

Either way a statistic that does not vary gets s = 1 (only centred) instead of a division by zero.
The statistics travel with the autoencoder checkpoint (`to_dict` / `norm_from_dict`).
"""

from __future__ import annotations

import dataclasses

import torch

from raygen.errors import UserError
from raygen.models.params import ParamLayout


def _check(thetas: torch.Tensor) -> torch.Tensor:
    if thetas.dim() != 2 or len(thetas) == 0:
        raise UserError("cannot fit the normalisation on an empty zoo; collect at least one member first")
    return thetas.double()


def _floored(std: torch.Tensor, min_std: float) -> torch.Tensor:
    return torch.where(std > min_std, std, torch.ones_like(std))


@dataclasses.dataclass
class TensorNorm:
    layout: ParamLayout
    mean: torch.Tensor  # [T] float64, one per tensor
    std: torch.Tensor  # [T] float64
    kind = "tensor"

    @classmethod
    def fit(cls, thetas: torch.Tensor, layout: ParamLayout, min_std: float = 1e-12) -> "TensorNorm":
        blocks = _check(thetas).split(layout.sizes, dim=1)
        mean = torch.stack([b.mean() for b in blocks])
        return cls(layout, mean, _floored(torch.stack([b.std(correction=0) for b in blocks]), min_std))

    def _expand(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v[self.layout.tensor_index()].to(dtype=like.dtype, device=like.device)

    def normalize(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self._expand(self.mean, theta)) / self._expand(self.std, theta)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self._expand(self.mean, z) + self._expand(self.std, z) * z

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layout": self.layout.to_dict(), "mean": self.mean.tolist(),
                "std": self.std.tolist()}


@dataclasses.dataclass
class WeightNorm(TensorNorm):
    """Per-coordinate statistics: `mean` and `std` are [P]."""

    kind = "weight"

    @classmethod
    def fit(cls, thetas: torch.Tensor, layout: ParamLayout, min_std: float = 1e-12) -> "WeightNorm":
        t = _check(thetas)
        return cls(layout, t.mean(0), _floored(t.std(0, correction=0), min_std))

    def _expand(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(dtype=like.dtype, device=like.device)


NORMS = {"tensor": TensorNorm, "weight": WeightNorm}


def norm_from_dict(d: dict) -> TensorNorm:
    """The normalisation a checkpoint recorded (written before `kind` existed: per tensor)."""
    return NORMS[d.get("kind", "tensor")](ParamLayout.from_dict(d["layout"]), torch.tensor(d["mean"], dtype=torch.float64),
                                          torch.tensor(d["std"], dtype=torch.float64))
