"""Per-sample random streams: sample i's randomness depends only on seeds[i].

Each sample owns a PCG64 generator keyed by numpy's SeedSequence(seed, spawn_key=(stream,)).
torch's CPU generator is not used because it keeps only the low 32 bits of a seed (seeds 5 and
5 + 2**32 give the same stream), which cannot give every seed two independent streams (the
initial state and the sampler's noise). SeedSequence hashes the full seed and the stream id.
Draws are made in float64 and then cast, so a float32 run sees the float64 run's noise rounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from raygen.errors import UserError

# Stream ids: the sampler's own noise and the initial state never share a stream.
SAMPLER_STREAM = 0
INIT_STREAM = 1


def _check_seeds(seeds: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(seeds, torch.Tensor):
        if seeds.is_floating_point() or seeds.dim() != 1:
            raise UserError("seeds must be a 1-D integer tensor or a list of ints")
        seeds = seeds.tolist()
    out = []
    for s in seeds:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0:
            raise UserError(f"seeds must be non-negative integers, got {s!r}")
        out.append(int(s))
    return out


def _generators(seeds: Sequence[int] | torch.Tensor, stream: int) -> list[np.random.Generator]:
    return [
        np.random.Generator(np.random.PCG64(np.random.SeedSequence(s, spawn_key=(stream,))))
        for s in _check_seeds(seeds)
    ]


class PerSampleNoise:
    """One independent random stream per sample; each call draws the next values of every stream.

    Each stream is read in chunks of CHUNK normals into a [B, CHUNK] buffer, so a call costs
    slicing, not B generator calls. Row i is a function of seeds[i] and of the sequence of calls
    only, never of the batch. Rademacher signs are the signs of the next normals (fair, and
    independent of everything else drawn).
    """

    CHUNK = 256

    def __init__(self, seeds: Sequence[int] | torch.Tensor, stream: int = SAMPLER_STREAM):
        self._gens = _generators(seeds, stream)
        self._buffer = np.empty((len(self._gens), 0))

    def __len__(self) -> int:
        return len(self._gens)

    def _next(self, shape: tuple[int, ...]) -> np.ndarray:
        n = math.prod(shape)
        if self._buffer.shape[1] < n:
            fresh = np.stack([g.standard_normal(max(self.CHUNK, n)) for g in self._gens])
            self._buffer = np.concatenate([self._buffer, fresh.reshape(len(self._gens), -1)], 1)
        out, self._buffer = self._buffer[:, :n], self._buffer[:, n:]
        return out.reshape(len(self._gens), *shape)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Standard normals, [B, *shape]."""
        return torch.from_numpy(self._next(shape)).to(dtype=dtype, device=device)

    def rademacher(self, *shape: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Independent +-1 signs with probability 1/2 each, [B, *shape]."""
        signs = np.where(self._next(shape) < 0, -1.0, 1.0)
        return torch.from_numpy(signs).to(dtype=dtype, device=device)


def initial_state(
    seeds: Sequence[int] | torch.Tensor,
    shape: Sequence[int],
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """x_init ~ N(0, scale^2 I), [B, *shape], from a per-seed stream independent of the sampler's."""
    return scale * PerSampleNoise(seeds, stream=INIT_STREAM).randn(*shape, dtype=dtype, device=device)
