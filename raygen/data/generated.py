"""Labelled image sets with stable integer ids: `raygen sample` output and image folders.

A contamination study selects rows by id (which generated or held-back images replace which real
ones), so every row here carries an `id` that does not depend on how Ray Data splits the files:
`sample_id` for `raygen sample` Parquet parts, the index in the sorted file list for an image
folder. `labelled_ids` reads only ids and labels (cheap metadata for planning in the driver);
`load_labelled` streams the images as a Ray Dataset of `id`, `image` (float32 [C, H, W] in
[0, 1]) and `label` (int64); `read_labelled` reads chosen ids into memory (for metrics and grids).

Sources are local paths or pyarrow URIs (`s3://...`). Sample parts are read through the part
store (`raygen.parts`: exactly the part files, never stray files beside them); image folders
through the one ImageFolder scanner, `raygen.data.arrays.image_files`. Generated samples are
mapped from the model's data range (recorded as `data_range` in the parts' metadata, e.g. [-1, 1]
for a diffusers model; [0, 1] when absent) to [0, 1], the range of the real images they stand in
for, and clipped there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raygen import parts, storage
from raygen.data.arrays import decode_image, image_channels, image_class_names, image_files, stack_images
from raygen.data.real import read_image_files
from raygen.errors import UserError
from raygen.parts import PartStore


def _samples_store(loc: storage.Location) -> PartStore | None:
    """The part store of a `raygen sample` run (its run dir or its samples/ dir), if `loc` holds one."""
    for candidate in (loc.child("samples"), loc):
        store = PartStore(candidate)
        if len(store.list_chunks()[0]):
            return store
    return None


def _resolve(source: str) -> tuple[str, Any]:
    """("samples", PartStore) or ("folder", Location) for a `generated` source."""
    import pyarrow.fs as pafs

    loc = storage.resolve(source)
    storage.check_reachable(loc)
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
        raise UserError(f"generated data {source!r} not found; pass a `raygen sample` run directory (or its "
                        "samples/ directory) or an image folder <root>/<class>/<image>.png")
    store = _samples_store(loc)
    return ("samples", store) if store is not None else ("folder", loc)


def _labelled_parts(store: PartStore):
    """The store's pyarrow Dataset, refused if its samples carry no labels."""
    dataset = store.dataset()
    if parts.LABEL not in dataset.schema.names:
        raise UserError(f"samples in {store.uri!r} have no labels; draw them from a class-conditional model "
                        "(train with num_classes > 0)")
    return dataset


def _shape(store: PartStore) -> list[int]:
    shape = store.metadata()["shape"]
    if len(shape) != 3:
        raise UserError(f"samples in {store.uri!r} have shape {shape}, not images [C, H, W]")
    return shape


def class_names(source: str) -> list[str] | None:
    """An image folder's class folder names (class-index order); None for sample parts, whose labels
    are the class indices of the data the model was trained on."""
    kind, where = _resolve(source)
    return image_class_names(where) if kind == "folder" else None


def labelled_ids(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of every row of `source`, sorted by id, without reading any image."""
    kind, where = _resolve(source)
    if kind == "folder":
        _, labels = image_files(where)
        return np.arange(len(labels), dtype=np.int64), labels
    table = _labelled_parts(where).to_table(columns=[parts.ID, parts.LABEL])
    ids, labels = table[parts.ID].to_numpy(), table[parts.LABEL].to_numpy()
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int64), labels[order].astype(np.int64)


def _decode_samples(store: PartStore):
    shape = _shape(store)
    lo, hi = store.metadata().get("data_range", (0.0, 1.0))

    def convert(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        flat = batch[parts.SAMPLE]
        flat = np.stack(list(flat)) if flat.dtype == object else np.asarray(flat)
        images = np.clip((flat.reshape(len(flat), *shape) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        return {"id": np.asarray(batch[parts.ID], dtype=np.int64), "image": images,
                "label": np.asarray(batch[parts.LABEL], dtype=np.int64)}

    return convert


def load_labelled(source: str, *, channels: int | None = None, image_size: int | None = None):
    """A Ray Dataset of `id`, `image` float32 [C, H, W] in [0, 1], `label` int64, streamed from `source`."""
    kind, where = _resolve(source)
    if kind == "samples":
        _labelled_parts(where)
        ds = where.ray_dataset(columns=[parts.ID, parts.SAMPLE, parts.LABEL])
        return ds.map_batches(_decode_samples(where), batch_format="numpy")
    paths, labels = image_files(where)
    row_of = {p: i for i, p in enumerate(paths)}
    channels = image_channels(where, paths[0], channels)

    def decode(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        rows = np.asarray([row_of[p] for p in batch["path"]], dtype=np.int64)
        images = [decode_image(data, p, channels=channels, image_size=image_size)
                  for data, p in zip(batch["bytes"], batch["path"])]
        return {"id": rows, "image": stack_images(images, storage.display(where.uri)), "label": labels[rows]}

    return read_image_files(where, paths).map_batches(decode, batch_format="numpy")


def read_labelled(source: str, ids: np.ndarray, *, channels: int | None = None,
                  image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, C, H, W] and labels [n] of the rows `ids` (in that order), read into this process."""
    import pyarrow.dataset as pads

    ids = np.asarray(ids, dtype=np.int64)
    kind, where = _resolve(source)
    if kind == "folder":
        paths, labels = image_files(where)
        channels = image_channels(where, paths[0], channels)
        images = []
        for i in ids:
            with where.fs.open_input_stream(paths[i]) as f:
                images.append(decode_image(f.read(), paths[i], channels=channels, image_size=image_size))
        return np.stack(images), labels[ids]
    table = _labelled_parts(where).to_table(columns=[parts.ID, parts.SAMPLE, parts.LABEL],
                                            filter=pads.field(parts.ID).isin(ids))
    batch = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    out = _decode_samples(where)(batch)
    position = {int(i): k for k, i in enumerate(out["id"])}
    missing = [int(i) for i in ids if int(i) not in position]
    if missing:
        raise UserError(f"generated data {where.uri!r} has no sample ids {missing[:5]}")
    take = np.asarray([position[int(i)] for i in ids])
    return out["image"][take], out["label"][take]
