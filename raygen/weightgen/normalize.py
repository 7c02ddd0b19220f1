"""Per-tensor z-scoring of parameter vectors (p-diff's normalisation).

For each tensor k of the layout, mu_k and s_k are the mean and standard deviation over the zoo of
all entries of that tensor; z = (theta - mu_k) / s_k entrywise, theta = mu_k + s_k z. Tensors that
do not vary in the zoo get s_k = 1 (z = theta - mu_k) instead of a division by zero.
The statistics travel with the autoencoder checkpoint (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses

import torch

from raygen.errors import UserError
from raygen.models.params import ParamLayout


@dataclasses.dataclass
class TensorNorm:
    layout: ParamLayout
    mean: torch.Tensor  # [T] float64, one per tensor
    std: torch.Tensor  # [T] float64

    @classmethod
    def fit(cls, thetas: torch.Tensor, layout: ParamLayout, min_std: float = 1e-12) -> "TensorNorm":
        if thetas.dim() != 2 or len(thetas) == 0:
            raise UserError("cannot fit the normalisation on an empty zoo; collect at least one member first")
        t = thetas.double()
        mean, std = [], []
        for block in t.split(layout.sizes, dim=1):
            mean.append(block.mean())
            s = block.std(correction=0)
            std.append(s if s > min_std else torch.ones((), dtype=torch.float64))
        return cls(layout, torch.stack(mean), torch.stack(std))

    def _expand(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v[self.layout.tensor_index()].to(dtype=like.dtype, device=like.device)

    def normalize(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self._expand(self.mean, theta)) / self._expand(self.std, theta)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self._expand(self.mean, z) + self._expand(self.std, z) * z

    def to_dict(self) -> dict:
        return {"layout": self.layout.to_dict(), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorNorm":
        return cls(ParamLayout.from_dict(d["layout"]), torch.tensor(d["mean"], dtype=torch.float64),
                   torch.tensor(d["std"], dtype=torch.float64))
