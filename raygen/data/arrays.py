"""Real labelled image data as numpy arrays, and the file-level helpers the Ray Data readers share.

No Ray here: `read_arrays` reads a whole (small) source into memory for the algorithms that want
arrays (weight-generation zoos, gradient-variance nets); `raygen.data.real` streams the same sources
as Ray Datasets. Sources: the built-in `digits` (scikit-learn's 1,797 real 8x8 digits), an image
folder (`root/<class>/<file>.png`), or Parquet with an image and a label column.
"""

from __future__ import annotations

import io
import os

import numpy as np

from raygen import storage
from raygen.errors import UserError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "webp")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits: images float32 [N, 1, 8, 8] in [0, 1], labels int64 [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    return images, digits.target.astype(np.int64)


def _pil_mode(channels: int) -> str:
    return {1: "L", 3: "RGB"}[channels]


def decode_image(data: bytes, where: str, *, channels: int, image_size: int | None) -> np.ndarray:
    """Encoded image bytes -> float32 [C, H, W] in [0, 1]; a corrupt file is a UserError naming it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert(_pil_mode(channels))
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error... on bad files
        raise UserError(f"corrupt or unreadable image {where} ({exc}); remove or replace the file") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def stack_images(images: list[np.ndarray], where: str) -> np.ndarray:
    if not images:
        raise UserError(f"{where} holds no images (0 rows); point the source at data with at least one image per class")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UserError(
            f"images in {where} have different sizes {sorted(shapes)[:2]}; set image_size to resize them to one size"
        )
    return np.stack(images)


def _check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise UserError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")


def _class_dirs(loc: storage.Location) -> list:
    import pyarrow.fs as pafs

    entries = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    class_dirs = sorted((e for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")),
                        key=lambda e: e.path)
    if not class_dirs:
        where = storage.display(loc.uri)
        raise UserError(f"image folder {where!r} has no class subfolders; expected {where}/<class>/<image>.png")
    return class_dirs


def image_class_names(loc: storage.Location) -> list[str]:
    """The class folder names of an ImageFolder tree, in class-index order (sorted)."""
    return [e.base_name for e in _class_dirs(loc)]


def image_files(loc: storage.Location) -> tuple[list[str], np.ndarray]:
    """An ImageFolder tree (`root/<class>/.../<image>.png`): image paths sorted within sorted class
    folders, and their class indices (class = index of its folder in sorted order; hidden folders
    skipped). The one scanner for real and generated image folders, local or in a bucket."""
    import pyarrow.fs as pafs

    where = storage.display(loc.uri)
    paths, labels = [], []
    class_dirs = _class_dirs(loc)
    # local: the root and every class folder count as entered, so a link to one of them is not followed
    seen = {_identity(d) for d in [loc.path, *(c.path for c in class_dirs)]} if loc.is_local else set()
    for index, class_dir in enumerate(class_dirs):
        if loc.is_local:
            found = sorted(_local_images(class_dir.path, seen))
        else:  # object stores have no links
            found = sorted(e.path for e in loc.fs.get_file_info(pafs.FileSelector(class_dir.path, recursive=True))
                           if e.type == pafs.FileType.File and e.extension.lower() in IMAGE_EXTENSIONS)
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise UserError(f"image folder {where!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}) in its class "
                        f"subfolders; expected {where}/<class>/<image>.png")
    return paths, np.asarray(labels, dtype=np.int64)


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _local_images(top: str, seen: set[tuple[int, int]]) -> list[str]:
    """Image files under a local directory, following links (a class folder may be one) but entering
    each real directory once: a link back up the tree (a loop) or to a folder already listed would
    otherwise count the same images many times (140 images once became 5,720 rows)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        if dirpath != top:
            if _identity(dirpath) in seen:
                dirnames[:] = []
                continue
            seen.add(_identity(dirpath))
        found += [f"{dirpath}/{name}" for name in filenames
                  if os.path.splitext(name)[1].lstrip(".").lower() in IMAGE_EXTENSIONS and os.path.isfile(f"{dirpath}/{name}")]
    return found


def image_channels(loc: storage.Location, first: str, channels: int | None) -> int:
    """`channels`, or 1/3 from the first image's mode (grayscale modes -> 1)."""
    if channels is not None:
        return channels
    from PIL import Image

    try:
        with loc.fs.open_input_file(first) as f, Image.open(f) as img:
            return 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
    except OSError as exc:
        raise UserError(f"corrupt or unreadable image {first} ({exc}); remove or replace the file") from None


def _parquet_schema(loc: storage.Location, columns: dict[str, str]):
    """The schema of the Parquet at `loc`; a missing column (config key -> column name) is one line."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    path = storage.display(loc.uri)
    try:
        schema = pads.dataset(loc.path, filesystem=loc.fs, format="parquet").schema
        if any((f.metadata or {}).get(b"ARROW:extension:name", b"").startswith(b"ray.data.") for f in schema):
            # written by Ray Data (its tensor columns): unregistered, pyarrow reads them as flat lists
            import ray.air.util.tensor_extensions.arrow  # noqa: F401 - registers Ray's extension types

            schema = pads.dataset(loc.path, filesystem=loc.fs, format="parquet").schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"cannot read Parquet at {path!r}: {exc}") from None
    for key, column in columns.items():
        if column not in schema.names:
            raise UserError(
                f"Parquet at {path!r} has no column {column!r} (columns: {', '.join(schema.names)}); "
                f"set {key} to the right column"
            )
    return schema


def _is_encoded(schema, image_column: str) -> bool:
    import pyarrow as pa

    kind = schema.field(image_column).type
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def parquet_images(raw, path: str, *, image_column: str, encoded: bool, channels: int | None,
                   image_size: int | None) -> np.ndarray:
    """A Parquet image column's values (encoded bytes, or [C, H, W] / [H, W] tensors, uint8 or
    float) -> float32 [N, C, H, W] in [0, 1]."""
    if encoded:
        return stack_images([decode_image(b, f"row of {path}", channels=channels, image_size=image_size)
                             for b in raw], path)
    images = np.stack(list(raw)) if getattr(raw, "dtype", None) == np.dtype(object) else np.asarray(raw)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    if images.ndim == 3:  # [N, H, W] grayscale
        images = images[:, None]
    if images.ndim != 4:
        raise UserError(
            f"column {image_column!r} in {path!r} holds arrays of shape {images.shape[1:]}; "
            "expected [C, H, W] or [H, W] tensors or encoded image bytes"
        )
    return images


def _source_kind(source: str) -> tuple[str, storage.Location]:
    """("parquet" | "folder", location) of a data source that is not "digits"."""
    import pyarrow.fs as pafs

    loc = storage.resolve(source)
    storage.check_reachable(loc)
    kind = loc.fs.get_file_info(loc.path).type
    if kind == pafs.FileType.NotFound:
        raise UserError(f"data source {source!r} not found; use 'digits', an image folder or a Parquet path")
    is_parquet = loc.path.endswith(".parquet") or (kind == pafs.FileType.Directory and any(
        e.extension == "parquet" for e in loc.fs.get_file_info(pafs.FileSelector(loc.path))))
    if is_parquet:
        return "parquet", loc
    if kind == pafs.FileType.Directory:
        return "folder", loc
    raise UserError(f"data source {source!r} is neither an image folder nor a .parquet file")


def read_arrays(source: str, *, image_column: str = "image", label_column: str = "label",
                extra_columns: dict[str, str] | None = None, image_size: int | None = None,
                channels: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, np.ndarray]]:
    """A small data set read whole into this process, in a fixed order (sorted files / Parquet
    row order): images float32 [N, C, H, W] in [0, 1], labels int64 [N] in 0..K-1, the K class
    names (an image folder's class folders; the sorted distinct label values otherwise) and the
    `extra_columns` (config key -> Parquet column) by key. The same sources as `load_dataset`, for
    work that needs every row in memory (model-zoo members); extra columns need a Parquet source."""
    import pyarrow.dataset as pads

    _check_channels(channels)
    extra_columns = extra_columns or {}
    kind, loc = ("digits", None) if source == "digits" else _source_kind(source)
    if extra_columns and kind != "parquet":
        key, column = next(iter(extra_columns.items()))
        raise UserError(f"{key} {column!r} needs a Parquet source with that column; {source!r} is "
                        f"{'the built-in digits' if kind == 'digits' else 'an image folder'}")
    if kind == "digits":
        images, labels = digits_arrays()
        return images, labels, [str(c) for c in range(10)], {}
    where = storage.display(loc.uri)
    if kind == "folder":
        paths, labels = image_files(loc)
        channels = image_channels(loc, paths[0], channels)
        images = []
        for path in paths:
            with loc.fs.open_input_file(path) as f:
                images.append(decode_image(f.read(), path, channels=channels, image_size=image_size))
        return stack_images(images, where), labels, image_class_names(loc), {}
    columns = {"image_column": image_column, "label_column": label_column, **extra_columns}
    schema = _parquet_schema(loc, columns)
    encoded = _is_encoded(schema, image_column)
    table = pads.dataset(loc.path, filesystem=loc.fs, format="parquet").to_table(columns=list(dict.fromkeys(columns.values())))
    raw = table.column(image_column).to_pylist()
    if not encoded:  # nested lists -> one array per row, in the innermost type (uint8 stays uint8)
        inner = schema.field(image_column).type
        while hasattr(inner, "value_type"):
            inner = inner.value_type
        raw = stack_images([np.asarray(r, dtype=inner.to_pandas_dtype()) for r in raw], where)
    images = parquet_images(raw, where, image_column=image_column, encoded=encoded,
                            channels=3 if encoded and channels is None else channels, image_size=image_size)
    names, labels = np.unique(table.column(label_column).to_numpy(zero_copy_only=False), return_inverse=True)
    return (images, labels.astype(np.int64), [str(c) for c in names.tolist()],
            {k: table.column(c).to_numpy(zero_copy_only=False) for k, c in extra_columns.items()})
