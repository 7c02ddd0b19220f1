"""Labelled image sets with stable integer ids: `raygen sample` output and image folders.

A contamination study selects rows by id (which generated or held-back images replace which real
ones), so every row here carries an `id` that does not depend on how Ray Data splits the files:
`sample_id` for `raygen sample` Parquet parts, the index in the sorted file list for an image
folder. `labelled_ids` reads only ids and labels (cheap metadata for planning in the driver);
`load_labelled` streams the images as a Ray Dataset of `id`, `image` (float32 [C, H, W] in
[0, 1]) and `label` (int64); `read_labelled` reads chosen ids into memory (for metrics and grids).

Generated samples are clipped to [0, 1], the range of the real images they stand in for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from raygen.data.real import IMAGE_EXTENSIONS, decode_image
from raygen.errors import UserError


def _samples_dir(path: Path) -> Path | None:
    """The Parquet parts directory of a `raygen sample` run (its run dir or its samples/ dir)."""
    for candidate in (path / "samples", path):
        if candidate.is_dir() and any(candidate.glob("part-*.parquet")):
            return candidate
    return None


def _folder_files(root: Path) -> tuple[list[str], np.ndarray]:
    """Sorted image paths and their class indices (sorted class-folder order, as in `load_dataset`)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for index, class_dir in enumerate(class_dirs):
        for p in sorted(class_dir.rglob("*")):
            if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
                paths.append(str(p.resolve()))
                labels.append(index)
    if not paths:
        raise UserError(f"image folder {str(root)!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}) "
                        f"in class subfolders; expected {root}/<class>/<image>.png")
    return paths, np.asarray(labels, dtype=np.int64)


def _folder_channels(first: str, channels: int | None) -> int:
    """`channels`, or 1/3 from the first image's mode (grayscale modes -> 1), as `load_dataset` does."""
    if channels is not None:
        return channels
    from PIL import Image

    try:
        with Image.open(first) as img:
            return 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
    except OSError as exc:
        raise UserError(f"corrupt or unreadable image {first} ({exc}); remove or replace the file") from None


def _resolve(source: str) -> tuple[str, Path]:
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(f"generated data {source!r} not found; pass a `raygen sample` run directory (or its "
                        "samples/ directory) or an image folder <root>/<class>/<image>.png")
    samples = _samples_dir(path)
    if samples is not None:
        return "samples", samples
    return "folder", path


def _parts_schema(samples: Path):
    import pyarrow.dataset as pads

    schema = pads.dataset(str(samples), format="parquet").schema
    if "label" not in schema.names:
        raise UserError(f"samples in {str(samples)!r} have no labels; draw them from a class-conditional model "
                        "(train with num_classes > 0)")
    return schema


def _shape(samples: Path) -> list[int]:
    import pyarrow.parquet as pq

    first = sorted(samples.glob("part-*.parquet"))[0]
    meta = pq.read_schema(first).metadata or {}
    if b"raygen" not in meta:
        raise UserError(f"{first} has no raygen metadata; it was not written by `raygen sample`")
    shape = json.loads(meta[b"raygen"])["shape"]
    if len(shape) != 3:
        raise UserError(f"samples in {str(samples)!r} have shape {shape}, not images [C, H, W]")
    return shape


def labelled_ids(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of every row of `source`, sorted by id, without reading any image."""
    kind, path = _resolve(source)
    if kind == "folder":
        _, labels = _folder_files(path)
        return np.arange(len(labels), dtype=np.int64), labels
    import pyarrow.dataset as pads

    _parts_schema(path)
    table = pads.dataset(str(path), format="parquet").to_table(columns=["sample_id", "label"])
    ids, labels = table["sample_id"].to_numpy(), table["label"].to_numpy()
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int64), labels[order].astype(np.int64)


def _decode_samples(shape: list[int]):
    def convert(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        flat = np.stack(list(batch["sample"])) if batch["sample"].dtype == object else np.asarray(batch["sample"])
        images = np.clip(flat.reshape(len(flat), *shape), 0.0, 1.0).astype(np.float32)
        return {"id": np.asarray(batch["sample_id"], dtype=np.int64), "image": images,
                "label": np.asarray(batch["label"], dtype=np.int64)}

    return convert


def load_labelled(source: str, *, channels: int | None = None, image_size: int | None = None):
    """A Ray Dataset of `id`, `image` float32 [C, H, W] in [0, 1], `label` int64, streamed from `source`."""
    import ray

    kind, path = _resolve(source)
    if kind == "samples":
        _parts_schema(path)
        ds = ray.data.read_parquet(str(path), columns=["sample_id", "sample", "label"])
        return ds.map_batches(_decode_samples(_shape(path)), batch_format="numpy")
    paths, labels = _folder_files(path)
    row_of = {p: i for i, p in enumerate(paths)}
    channels = _folder_channels(paths[0], channels)

    def decode(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        rows = [row_of[str(Path(p).resolve())] for p in batch["path"]]
        images = [decode_image(data, p, channels=channels, image_size=image_size)
                  for data, p in zip(batch["bytes"], batch["path"])]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise UserError(f"images in {str(path)!r} have different sizes; set image_size to resize them")
        return {"id": np.asarray(rows, dtype=np.int64), "image": np.stack(images),
                "label": labels[np.asarray(rows, dtype=np.int64)]}

    ds = ray.data.read_binary_files(paths, include_paths=True)
    return ds.map_batches(decode, batch_format="numpy")


def read_labelled(source: str, ids: np.ndarray, *, channels: int | None = None,
                  image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, C, H, W] and labels [n] of the rows `ids` (in that order), read into this process."""
    ids = np.asarray(ids, dtype=np.int64)
    kind, path = _resolve(source)
    if kind == "folder":
        paths, labels = _folder_files(path)
        channels = _folder_channels(paths[0], channels)
        images = []
        for i in ids:
            with open(paths[i], "rb") as f:
                images.append(decode_image(f.read(), paths[i], channels=channels, image_size=image_size))
        return np.stack(images), labels[ids]
    import pyarrow.dataset as pads

    _parts_schema(path)
    dataset = pads.dataset(str(path), format="parquet")
    table = dataset.to_table(columns=["sample_id", "sample", "label"], filter=pads.field("sample_id").isin(ids))
    batch = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    out = _decode_samples(_shape(path))(batch)
    position = {int(i): k for k, i in enumerate(out["id"])}
    missing = [int(i) for i in ids if int(i) not in position]
    if missing:
        raise UserError(f"generated data {str(path)!r} has no sample ids {missing[:5]}")
    take = np.asarray([position[int(i)] for i in ids])
    return out["image"][take], out["label"][take]
