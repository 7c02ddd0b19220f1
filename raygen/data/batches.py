"""Training batches from a Ray Dataset (or a Ray Train shard), fetched in large pieces.

Ray Data pays a fixed cost per batch it hands out (fetching the block, formatting, collating into
tensors: about a millisecond, much of it holding the GIL next to the training step). Training
batches are small (tens of rows) and steps short, so `torch_batches` asks Ray Data for
`fetch_rows` rows at a time and slices them into training batches itself:
`benchmarks/mixing_throughput.py` measured the streaming path at 6.6k rows/s with 64-row fetches
and 9.0k rows/s with 1,024-row fetches, on the same machine at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def torch_batches(source, batch_size: int, columns: tuple[str, ...], *, fetch_rows: int = 1024,
                  **iter_kwargs) -> Iterator[tuple[torch.Tensor, ...]]:
    """One pass over `source`: tuples of `columns` tensors with exactly `batch_size` rows each, in
    the order Ray Data gives them; the last < batch_size rows are dropped (as `drop_last=True`).

    `iter_kwargs` go to `iter_torch_batches` (prefetch_batches, local_shuffle_buffer_size, ...)."""
    fetch = max(batch_size, fetch_rows // batch_size * batch_size)
    carry: list[torch.Tensor] | None = None
    for piece in source.iter_torch_batches(batch_size=fetch, drop_last=False, **iter_kwargs):
        cols = [piece[c] for c in columns]
        if carry is not None:  # rows left over from the previous piece start the next batch
            cols = [torch.cat([a, b]) for a, b in zip(carry, cols)]
        n = len(cols[0])
        full = n - n % batch_size
        for i in range(0, full, batch_size):
            yield tuple(c[i:i + batch_size] for c in cols)
        carry = [c[full:] for c in cols] if full < n else None
