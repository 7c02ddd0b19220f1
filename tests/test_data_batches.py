"""`raygen.data.batches.torch_batches`: large fetches sliced into exact training batches."""

import pytest
import torch

from raygen.data.batches import torch_batches


class Pieces:
    """A source handing out rows 0..n-1 in pieces of irregular sizes (as Ray Data may, e.g. at
    block ends), whatever batch size is asked for."""

    def __init__(self, sizes):
        self.sizes = sizes

    def iter_torch_batches(self, batch_size, drop_last, **kwargs):
        assert not drop_last  # dropping per piece would lose up to a piece per epoch
        start = 0
        for size in self.sizes:
            ids = torch.arange(start, start + size)
            yield {"x": ids * 10, "y": ids}
            start += size


@pytest.mark.parametrize("sizes", [[1024, 1024, 100], [7, 300, 1, 1000, 64], [10], []])
def test_batches_are_consecutive_rows_of_exact_size(sizes):
    n, b = sum(sizes), 32
    out = list(torch_batches(Pieces(sizes), b, ("x", "y")))
    assert all(len(x) == b and len(y) == b for x, y in out)
    y = torch.cat([y for _, y in out]) if out else torch.zeros(0, dtype=torch.long)
    assert torch.equal(y, torch.arange(n // b * b))  # every full batch, in order; the remainder dropped
    assert all(torch.equal(x, y * 10) for x, y in out)  # columns stay aligned


def test_on_a_real_ray_dataset(ray_local):
    ds = ray_local.data.range(1000, override_num_blocks=7)
    ids = torch.cat([b[0] for b in torch_batches(ds, 64, ("id",), fetch_rows=300)])
    assert len(ids) == 1000 // 64 * 64 and len(set(ids.tolist())) == len(ids)
