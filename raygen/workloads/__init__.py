"""The workload layer: one module per CLI verb, each holding its config and its Ray wiring.

The algorithm packages (`sampling`, `diffusion`, `hypergrad`, `contamination`, `metrics`, ...)
never import Ray; Ray lives here, in `raygen.data` (Ray Data readers), `raygen.train_loop`
(the Ray Train checkpoint store) and `raygen.runtime`.

Each module defines `CONFIG` (its `raygen.config.Config` subclass) and
`run(config, *, verbose=False) -> dict` (the run's summary). `WORKLOADS` maps a job file's
`workload:` value to (module, default job file, one-line help); `raygen <verb>` is generated from
it. Modules are imported only when used, so `raygen --help` stays fast.
"""

import importlib
from types import ModuleType
from typing import NamedTuple

from raygen.errors import UserError


class Workload(NamedTuple):
    module: str
    default_job: str | None
    help: str


WORKLOADS = {
    "sample": Workload("raygen.workloads.sample", "jobs/sample_mog.yaml",
                       "Generate samples in parallel on Ray workers."),
    "train": Workload("raygen.workloads.train", "jobs/train_sadm_digits.yaml",
                      "Train a diffusion model with SADM on Ray Train."),
    "study": Workload("raygen.workloads.study", "jobs/study_digits.yaml",
                      "Run a contamination study on Ray Data + Ray Tune."),
    "tune": Workload("raygen.workloads.tune", "jobs/tune_hypergrad.yaml",
                     "Tune hyperparameters with Nystrom hypergradients on Ray Tune."),
    "quickstart": Workload("raygen.workloads.quickstart", "jobs/quickstart.yaml",
                           "The main job: train -> sample -> contamination study."),
    "zoo": Workload("raygen.workloads.zoo", "jobs/zoo_digits.yaml",
                    "Train a model zoo (classifier weights for weight generation) on Ray workers."),
    "weightgen": Workload("raygen.workloads.weightgen", "jobs/weightgen_pdiff.yaml",
                          "Generate neural-network weights by diffusion (p-diff, D2NWG) on Ray."),
    "gradvar": Workload("raygen.workloads.gradvar", "jobs/gradvar_digits.yaml",
                        "Measure the variance of likelihood-ratio gradient estimators for SBNs on Ray Tune."),
    "cmt": Workload("raygen.workloads.cmt", "jobs/cmt_gasoline.yaml",
                    "Few-shot domain adaptation by causal mechanism transfer on Ray Tune."),
}


def workload_module(name: str) -> ModuleType:
    if name not in WORKLOADS:
        raise UserError(f"unknown workload {name!r}; valid workloads: {', '.join(sorted(WORKLOADS))}")
    return importlib.import_module(WORKLOADS[name].module)
