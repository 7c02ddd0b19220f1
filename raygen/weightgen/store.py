"""Zoos and generated weights on disk: part stores of flat parameter vectors (`raygen.parts`).

Rows are `model_id, task_id, seed, step, params` (a fixed-size float32 list) and `val_acc,
test_acc`; every part's metadata holds the architecture, the parameter layout, the base weights
(trajectory zoos), the task definitions and the data source. Written by `raygen zoo` (`<run
dir>/parts/`) and by `raygen weightgen`'s generation stage (`<run dir>/generated/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raygen import storage
from raygen.errors import UserError
from raygen.parts import PartStore

COLUMNS = ("model_id", "task_id", "seed", "step", "params", "val_acc", "test_acc")
ID_COLUMN = "model_id"
PARTS = "parts"  # a zoo run directory's parts


def params_table(cols: dict[str, list]):
    """A parts table: integer/float columns plus `params` ([rows, P] arrays, concatenated) as a
    fixed-size float32 list."""
    import pyarrow as pa

    flat = np.concatenate(cols["params"]).astype(np.float32)
    arrays = {k: pa.array(np.asarray(v)) for k, v in cols.items() if k != "params"}
    arrays["params"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
    return pa.table({k: arrays[k] for k in cols})


def zoo_store(uri: str) -> PartStore:
    """The part store of a zoo: a zoo run directory (its `parts/`) or the parts directory itself."""
    loc = storage.resolve(uri)
    if storage.exists(loc.child(PARTS)):
        loc = loc.child(PARTS)
    return PartStore(loc, id_column=ID_COLUMN)


def read_zoo(uri: str, what: str = "zoo") -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """(params [N, P] float32 tensor, other columns by name, metadata) of a zoo / generated store,
    rows in id order. Refuses an empty store and one whose parts disagree on architecture or layout."""
    import torch

    store = zoo_store(uri)
    paths = store.part_paths()
    if not paths:
        raise UserError(f"the {what} at {store.uri} is empty (no part-*.parquet files); collect it first "
                        "(raygen zoo) or point `zoo` at a zoo run directory or its parts/")
    metas = [store.part_metadata(path) for path in paths]
    for path, m in zip(paths, metas):
        if (m["arch"], m["layout"]) != (metas[0]["arch"], metas[0]["layout"]):
            raise UserError(f"the {what} at {store.uri} mixes architectures: {Path(path).name} has arch "
                            f"{m['arch']} / {len(m['layout']['names'])} tensors, the first part {metas[0]['arch']} / "
                            f"{len(metas[0]['layout']['names'])}; keep one architecture per zoo")
    table = store.dataset().to_table().sort_by(ID_COLUMN)
    params = np.stack(table.column("params").to_numpy(zero_copy_only=False)).astype(np.float32)
    cols = {k: table.column(k).to_numpy() for k in table.column_names if k != "params"}
    return torch.from_numpy(params), cols, metas[0]
