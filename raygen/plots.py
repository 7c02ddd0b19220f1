"""The figures reports share: image grids and scatter plots.

- `image_grid(images)`: [N, C, H, W] in [0, 1] -> one [C, H', W'] array, for TensorBoard
  (`add_image`) and `png_bytes` (training sample grids, `RunDir.log_images`).
- `labelled_grids(panels)`: a matplotlib figure of side-by-side image grids, each image titled
  with its label (sampling preview, contamination report's real-vs-generated grids).
- `scatter(panels)`: a figure of 2-D point clouds side by side on shared limits (sampling preview
  of analytic targets).

Figures are returned, not saved: workloads write them with `RunDir.save_figure(rel, fig)`, which
also works when the run directory is in a bucket. Ray-free; numpy, PIL and matplotlib only.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _numpy(images) -> np.ndarray:
    if hasattr(images, "detach"):  # a torch tensor
        images = images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def image_grid(images, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] in [0, 1] (numpy or torch) -> one float32 [C, rows*(H+pad)+pad, cols*(W+pad)+pad]
    image on a white background, ceil(sqrt(N)) columns, values clipped to [0, 1]."""
    images = np.clip(_numpy(images), 0.0, 1.0)
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = image
    return grid


def png_bytes(grid, upscale: int = 4) -> bytes:
    """A [C, H, W] image in [0, 1] as PNG bytes, enlarged `upscale` times by nearest neighbour
    (8x8 digits are unreadable at 1:1; nearest keeps the pixels exact)."""
    from PIL import Image

    array = (np.clip(_numpy(grid), 0.0, 1.0).transpose(1, 2, 0) * 255).round().astype(np.uint8)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


def _show(ax, image: np.ndarray) -> None:
    image = np.clip(image, 0, 1).transpose(1, 2, 0)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)


def labelled_grids(panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]], per_panel: int = 40,
                   cols: int = 8):
    """Side-by-side grids of up to `per_panel` images each: panels are (title, images [N, C, H, W] in
    [0, 1], labels [N] or None); each image is titled with its label."""
    plt = pyplot()
    rows = math.ceil(per_panel / cols)
    fig = plt.figure(figsize=(cols * len(panels) * 0.9 + 0.5 * (len(panels) - 1), rows * 0.95 + 0.4))
    outer = fig.add_gridspec(1, len(panels), wspace=0.08)
    for p, (title, images, labels) in enumerate(panels):
        inner = outer[p].subgridspec(rows, cols, wspace=0.05, hspace=0.35)
        for i in range(rows * cols):
            ax = fig.add_subplot(inner[i // cols, i % cols])
            ax.axis("off")
            if i < min(per_panel, len(images)):
                _show(ax, images[i])
                if labels is not None:
                    ax.set_title(str(int(labels[i])), fontsize=6, pad=1)
            if i == cols // 2 - 1:
                ax.text(1.0, 1.9, title, transform=ax.transAxes, ha="center", fontsize=9)
    return fig


def scatter(panels: Sequence[tuple[str, np.ndarray]]):
    """2-D point clouds side by side, titled with their size, on shared limits (0.5-99.5 percentiles
    of all points, so a few far outliers do not shrink the picture)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels):
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        ax.set_title(f"{title} (n={len(points)})")
        ax.set_aspect("equal")
    limits = np.percentile(np.concatenate([p for _, p in panels]), [0.5, 99.5], axis=0)
    for ax in axes[0]:
        ax.set_xlim(limits[0, 0] - 0.5, limits[1, 0] + 0.5)
        ax.set_ylim(limits[0, 1] - 0.5, limits[1, 1] + 0.5)
    fig.tight_layout()
    return fig
