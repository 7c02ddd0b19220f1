"""Real labelled image data as Ray Datasets; files are read by Ray Data tasks, never whole in the driver.

Columns `image` (float32 [C, H, W] in [0, 1]) and `label` (int64). The file-level helpers and the
numpy loaders they share live in `raygen.data.arrays` (no Ray).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raygen import storage
from raygen.data.arrays import (_check_channels, _is_encoded, _parquet_schema, _source_kind, decode_image,
                                digits_arrays, image_channels, image_files, parquet_images, stack_images)


def digits_dataset(*, ids: bool = False):
    """The digits as a Ray Dataset of `image`, `label` (and `id` = row index, with `ids=True`)."""
    import ray

    images, labels = digits_arrays()
    rows = [{"image": im, "label": int(lb)} for im, lb in zip(images, labels)]
    if ids:
        rows = [{"id": i, **row} for i, row in enumerate(rows)]
    # a few large blocks: from_items' default of ~200 nine-row blocks iterates ~4x slower
    return ray.data.from_items(rows, override_num_blocks=8)



def read_image_files(loc: storage.Location, paths: list[str]):
    """A Ray Dataset of `bytes` and `path` (as listed in `paths`) read by Ray Data tasks."""
    import ray

    return ray.data.read_binary_files(paths, filesystem=loc.fs, include_paths=True)



def _image_folder(loc: storage.Location, *, channels: int | None, image_size: int | None):
    paths, labels = image_files(loc)
    channels = image_channels(loc, paths[0], channels)
    label_of = dict(zip(paths, labels.tolist()))

    def decode(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        images = [decode_image(data, path, channels=channels, image_size=image_size)
                  for data, path in zip(batch["bytes"], batch["path"])]
        return {"image": stack_images(images, storage.display(loc.uri)),
                "label": np.asarray([label_of[path] for path in batch["path"]], dtype=np.int64)}

    return read_image_files(loc, paths).map_batches(decode, batch_format="numpy")



def _parquet(loc: storage.Location, *, image_column: str, label_column: str, channels: int | None, image_size: int | None):
    import ray

    path = storage.display(loc.uri)
    schema = _parquet_schema(loc, {"image_column": image_column, "label_column": label_column})
    encoded = _is_encoded(schema, image_column)
    if encoded and channels is None:
        channels = 3

    def convert(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        images = parquet_images(batch[image_column], path, image_column=image_column, encoded=encoded,
                                channels=channels, image_size=image_size)
        return {"image": images, "label": np.asarray(batch[label_column], dtype=np.int64)}

    ds = ray.data.read_parquet(loc.path, filesystem=loc.fs, columns=[image_column, label_column])
    return ds.map_batches(convert, batch_format="numpy")



def load_dataset(
    source: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    image_size: int | None = None,
    channels: int | None = None,
):
    """A Ray Dataset of `image` float32 [C, H, W] in [0, 1] and `label` int64 rows.

    `source` is "digits", an ImageFolder-layout directory, or a Parquet file / directory of files,
    as a local path or a pyarrow URI (`s3://bucket/data`).
    """
    _check_channels(channels)
    if source == "digits":
        return digits_dataset()
    kind, loc = _source_kind(source)
    if kind == "parquet":
        return _parquet(loc, image_column=image_column, label_column=label_column, channels=channels,
                        image_size=image_size)
    return _image_folder(loc, channels=channels, image_size=image_size)
