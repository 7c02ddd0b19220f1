"""The torch thread policy, in one place.

raygen's chunk workers, trial functions and small trainers (zoo CNNs, the parameter AE, the latent
denoiser) run on one torch thread: their tensors are tiny, one thread is fastest, and on a loaded
machine extra threads only contend (measured ~10x slower with 2 threads); one thread also fixes
the float summation order, so a result does not depend on the machine's core count.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """torch on `n` threads inside the block; the caller's setting is restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def use_one_thread() -> None:
    """For a process of its own (a Ray trial or chunk worker): one torch thread from here on."""
    import torch

    torch.set_num_threads(1)


def one_thread(fn: Callable) -> Callable:
    """`fn` runs on one torch thread (see the module docstring); the caller's setting is kept."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch_threads(1):
            return fn(*args, **kwargs)

    return wrapped
