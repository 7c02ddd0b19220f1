"""Causal-mechanism-transfer augmentation (Teshima, Sato & Sugiyama, ICML 2020, Alg. 1).

Given n target points z_i and an estimate h ≈ f⁻¹:

    ŝ_i = h(z_i)                                      estimated independent components
    s̄_(i₁..i_D) = (ŝ_{i₁,1}, ŝ_{i₂,2}, ..., ŝ_{i_D,D})  every cross-sample recombination (n^D of them)
    z̄ = h⁻¹(s̄)                                        back to data space

Because the components are independent in every domain, the recombinations are (approximately)
draws from the target's own joint law: the n^D points estimate the target risk with far lower
variance than the n originals (the paper's Theorem 1). Above a size limit a random subset of the
index tuples, drawn from the caller's generator, is used. Points a one-class SVM fitted on source data flags as outliers, and
non-finite ones, are rejected: h⁻¹ is only trained where the source data lie.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

Map = Callable[[np.ndarray], np.ndarray]


def recombination_indices(n: int, dim: int, *, max_size: int, rng: np.random.Generator) -> np.ndarray:
    """[M, dim] index tuples: all n^dim (lexicographic) if n^dim ≤ max_size, else max_size distinct ones drawn by rng."""
    total = n**dim
    if total <= max_size:
        flat = np.arange(total)
    else:
        flat = np.sort(rng.choice(total, size=max_size, replace=False))
    return np.stack(np.unravel_index(flat, (n,) * dim), axis=1)


def recombine(s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """s̄[m, d] = s[idx[m, d], d]."""
    return s[idx, np.arange(s.shape[1])]


class SupportFilter:
    """Accept points inside the source data's support: OneClassSVM(nu, gamma="auto") says +1 and all finite."""

    def __init__(self, z_source: np.ndarray, *, nu: float = 0.1):
        from sklearn.svm import OneClassSVM

        self.svm = OneClassSVM(nu=nu, gamma="auto").fit(z_source)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        finite = np.isfinite(z).all(axis=1)
        inside = self.svm.predict(np.where(np.isfinite(z), z, 0.0)) == 1
        return finite & inside


@dataclasses.dataclass(frozen=True)
class Augmented:
    z: np.ndarray  # accepted z̄, [M_accepted, D]
    idx: np.ndarray  # their index tuples, [M_accepted, D]
    proposed: int  # M before rejection

    @property
    def acceptance(self) -> float:
        return len(self.z) / max(self.proposed, 1)


def augment(z: np.ndarray, h: Map, h_inv: Map, *, max_size: int, rng: np.random.Generator,
            accept: Callable[[np.ndarray], np.ndarray] | None = None) -> Augmented:
    """z̄ = h⁻¹(recombine(h(z))) over all (or a random subset of) index tuples, filtered by `accept`."""
    idx = recombination_indices(len(z), z.shape[1], max_size=max_size, rng=rng)
    with np.errstate(all="ignore"):  # a poor h⁻¹ may overflow; such rows are rejected below
        z_bar = h_inv(recombine(h(z), idx))
    keep = np.isfinite(z_bar).all(axis=1) if accept is None else accept(z_bar)
    return Augmented(z=z_bar[keep], idx=idx[keep], proposed=len(idx))
