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
from raygen.data.generated import class_names, labelled_ids, load_labelled, read_labelled
from raygen.errors import UserError


@dataclasses.dataclass
class Source:
    name: str
    ids: np.ndarray  # sorted
    labels: np.ndarray  # labels[i] belongs to ids[i], as class indices of the real data
    class_names: list[str] | None  # an image folder's class folders; None: labels are class indices already
    relabel: np.ndarray | None = None  # own class index -> the real data's class index

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        return self.labels[np.searchsorted(self.ids, ids)]

    def dataset(self):
        if self.name == "digits":
            return digits_dataset(ids=True)
        ds = load_labelled(self.name)
        if self.relabel is None:
            return ds
        relabel = self.relabel
        return ds.map_batches(lambda b: {**b, "label": relabel[b["label"]]}, batch_format="numpy")

    def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.name == "digits":
            images, labels = digits_arrays()
            return images[ids], labels[ids]
        images, labels = read_labelled(self.name, ids)
        return images, (labels if self.relabel is None else self.relabel[labels])

    def matched_to(self, real: "Source") -> "Source":
        """This (generated) source with its classes matched to the real data's by name.

        Image folders are matched by folder name (sorted order would silently pair `eight` with
        class 0); a `raygen sample` run's labels are the real data's class indices already.
        """
        real_names = real.class_names or [str(c) for c in range(int(real.labels.max()) + 1)]
        if self.class_names is None:
            if int(self.labels.max()) >= len(real_names):
                raise UserError(f"generated data {self.name!r} has labels up to {int(self.labels.max())} but the real "
                                f"data has {len(real_names)} classes; sample with a model trained on this real data")
            return self
        unknown = [n for n in self.class_names if n not in real_names]
        if unknown:
            raise UserError(f"generated class folders {unknown[:5]} of {self.name!r} are not classes of the real data "
                            f"({', '.join(real_names[:10])}{', ...' if len(real_names) > 10 else ''}); name each "
                            "folder after the real class it holds")
        relabel = np.asarray([real_names.index(n) for n in self.class_names], dtype=np.int64)
        return dataclasses.replace(self, labels=relabel[self.labels], relabel=relabel, class_names=None)


def open_source(name: str, what: str) -> Source:
    if name == "digits":
        _, labels = digits_arrays()
        return Source(name, np.arange(len(labels), dtype=np.int64), labels, [str(c) for c in range(10)])
    import pyarrow.fs as pafs

    loc = storage.resolve(name)
    storage.check_reachable(loc)
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
        raise UserError(f"{what} data {name!r} not found; use 'digits' (real only), an image folder "
                        "<root>/<class>/<image>.png, or a `raygen sample` run directory")
    ids, labels = labelled_ids(name)
    return Source(name, ids, labels, class_names(name))
