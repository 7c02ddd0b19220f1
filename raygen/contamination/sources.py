"""The study's two inputs as id-addressable labelled image sets.

Real data: the built-in `digits` (ids = row index in scikit-learn's order) or an image folder
(ids = index in the sorted file list). Generated data: a `raygen sample` run (ids = sample_id) or
an image folder. Each source gives its ids and labels without images (for planning), a streaming
Ray Dataset of `id, image, label` (for mixing) and an in-memory read of chosen ids (for metrics,
sample grids and the test sets, which are small by construction).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raygen import storage
from raygen.data import digits_arrays, digits_dataset
from raygen.data.generated import labelled_ids, load_labelled, read_labelled
from raygen.errors import UserError


@dataclasses.dataclass
class Source:
    name: str
    ids: np.ndarray  # sorted
    labels: np.ndarray  # labels[i] belongs to ids[i]

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        return self.labels[np.searchsorted(self.ids, ids)]

    def dataset(self):
        if self.name == "digits":
            return digits_dataset(ids=True)
        return load_labelled(self.name)

    def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.name == "digits":
            images, labels = digits_arrays()
            return images[ids], labels[ids]
        return read_labelled(self.name, ids)


def open_source(name: str, what: str) -> Source:
    if name == "digits":
        _, labels = digits_arrays()
        return Source(name, np.arange(len(labels), dtype=np.int64), labels)
    import pyarrow.fs as pafs

    loc = storage.resolve(name)
    storage.check_reachable(loc)
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
        raise UserError(f"{what} data {name!r} not found; use 'digits' (real only), an image folder "
                        "<root>/<class>/<image>.png, or a `raygen sample` run directory")
    ids, labels = labelled_ids(name)
    return Source(name, ids, labels)
