"""Image grids (exact pixel placement), PNG encoding and the report figures."""

import io

import numpy as np
import torch
from PIL import Image

from raygen import plots


def test_image_grid_places_each_image_exactly():
    images = np.arange(5 * 2 * 3 * 2, dtype=np.float32).reshape(5, 2, 3, 2) / 100  # N=5, C=2, H=3, W=2
    grid = plots.image_grid(images, pad=1)
    # ceil(sqrt(5)) = 3 columns, 2 rows: C x (2*(3+1)+1) x (3*(2+1)+1)
    assert grid.shape == (2, 9, 10) and grid.dtype == np.float32
    for i in range(5):
        r, q = divmod(i, 3)
        np.testing.assert_array_equal(grid[:, 1 + 4 * r:4 + 4 * r, 1 + 3 * q:3 + 3 * q], images[i])
    np.testing.assert_array_equal(grid[:, 5:8, 7:9], 1.0)  # the empty sixth cell is background
    np.testing.assert_array_equal(grid[:, 0, :], 1.0)  # padding
    torch_grid = plots.image_grid(torch.as_tensor(images) * 3 - 1)  # torch input, values clipped
    np.testing.assert_array_equal(torch_grid, plots.image_grid(np.clip(images * 3 - 1, 0, 1)))


def test_png_bytes_round_trip_with_nearest_upscaling():
    grid = np.zeros((1, 2, 3), dtype=np.float32)
    grid[0, 1, 2] = 1.0
    image = np.asarray(Image.open(io.BytesIO(plots.png_bytes(grid, upscale=2))))
    assert image.shape == (4, 6)
    expected = np.zeros((4, 6), np.uint8)
    expected[2:4, 4:6] = 255
    np.testing.assert_array_equal(image, expected)
    rgb = np.asarray(Image.open(io.BytesIO(plots.png_bytes(np.full((3, 2, 2), 0.5), upscale=1))))
    assert rgb.shape == (2, 2, 3) and (rgb == 128).all()


def test_labelled_grids_and_scatter_figures():
    rng = np.random.default_rng(0)
    fig = plots.labelled_grids([("real", rng.random((10, 1, 8, 8)), np.arange(10)),
                                ("generated", rng.random((3, 3, 8, 8)), None)], per_panel=16, cols=8)
    axes = fig.get_axes()
    assert len(axes) == 2 * 16
    assert [ax.get_title() for ax in axes[:10]] == [str(i) for i in range(10)]
    assert len(axes[16].images) == 1 and axes[16].get_title() == "" and len(axes[19].images) == 0
    plots.pyplot().close(fig)
    points = rng.normal(size=(200, 2))
    fig = plots.scatter([("exact", points), ("sampled", points + 10)])
    assert [ax.get_title() for ax in fig.get_axes()] == ["exact (n=200)", "sampled (n=200)"]
    low, high = fig.get_axes()[0].get_xlim()
    assert low < np.percentile(points[:, 0], 1) and high > np.percentile(points[:, 0] + 10, 99)
    plots.pyplot().close(fig)
