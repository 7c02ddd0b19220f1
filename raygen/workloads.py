"""The workloads a job file can name, as a plain dict: `workload:` value -> module.

Each module defines `CONFIG` (its `raygen.config.Config` subclass) and
`run(config, *, verbose=False) -> dict` (the run's summary). Modules are imported only when
used, so `raygen --help` stays fast and one workload's imports never slow another's.
"""

import importlib
from types import ModuleType

from raygen.errors import UserError

WORKLOADS = {
    "sample": "raygen.distributed.sampling",
    "tune": "raygen.distributed.tune_hypergrad",
    "train": "raygen.distributed.train_sadm",
    "study": "raygen.distributed.study",
    "quickstart": "raygen.distributed.quickstart",
}


def workload_module(name: str) -> ModuleType:
    if name not in WORKLOADS:
        raise UserError(f"unknown workload {name!r}; valid workloads: {', '.join(sorted(WORKLOADS))}")
    return importlib.import_module(WORKLOADS[name])
