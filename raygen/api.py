"""Using raygen from Python: run any workload, read its outputs without knowing the run directory's layout.

    import raygen

    result = raygen.run("sample", n_samples=1000, name="mine")  # the default job + overrides, like
                                                                # `raygen sample --set n_samples=1000 ...`
    result.run_dir, result.report["stats"]
    table = raygen.read_samples(result)                         # a pyarrow Table (dataset=True: ray.data)

`run` follows the CLI's rules exactly (`execute` is the CLI's path too): the config is validated,
storage and the workload's inputs are checked before Ray starts, a run directory holding results
made with other settings is refused, the same settings resume, `fresh=True` starts over. Errors are
`raygen.errors.UserError` exceptions (one line, the fix included); nothing calls `sys.exit`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from raygen import storage
from raygen.config import Config
from raygen.errors import UserError


@dataclasses.dataclass(frozen=True)
class Result:
    """A finished run: its workload, config, run directory (local path or URI) and the summary its
    `run` returned."""

    workload: str
    config: Config
    run_dir: str
    summary: dict[str, Any]

    @property
    def report(self) -> dict[str, Any] | None:
        """The run's report.json (what report.md shows), None for a workload that writes none."""
        loc = storage.resolve(self.run_dir).child("report.json")
        return json.loads(storage.read_bytes(loc)) if storage.exists(loc) else None


def execute(workload: str, config: Config, *, address: str | None = None, verbose: bool = False,
            fresh: bool = False) -> dict[str, Any]:
    """Run `workload` with a validated config: storage and inputs checked before Ray starts, then
    the workload's `run`. The one path of `raygen run` / `raygen <verb>` and `raygen.run`."""
    from raygen import runtime
    from raygen.rundir import RunDir
    from raygen.submit import check_shared_storage
    from raygen.workloads import workload_module

    location = storage.resolve(config.run_dir)  # storage mistakes fail here, before Ray starts
    storage.check_reachable(location)
    storage.check_writable(location)
    module = workload_module(workload)
    checked = {}
    if hasattr(module, "preflight"):  # the workload's own input checks (a model, a data set), before Ray starts
        checked["checked"] = module.preflight(config)
    runtime.init(address, verbose=verbose)
    check_shared_storage(config.storage_path, runtime.num_nodes())
    if fresh:
        RunDir.clear(config)
    return module.run(config, verbose=verbose, **checked)


def make_config(workload: str, config: Config | None = None, *, job: str | Path | None = None,
                **overrides: Any) -> Config:
    """The workload's validated config: `config` (a Config of that workload), a job file, or, with
    neither, the workload's default job (as `raygen <workload>` uses), each with `overrides` applied."""
    from raygen.jobs import load_job
    from raygen.workloads import WORKLOADS, workload_module

    module = workload_module(workload)
    if config is not None and job is not None:
        raise UserError("give a config or a job file, not both")
    if config is None:
        path = job or WORKLOADS[workload].default_job
        if path is None:
            raise UserError(f"workload {workload!r} has no default job; pass a config or job=")
        loaded = load_job(path)
        if loaded.workload != workload:
            raise UserError(f"{path} is a '{loaded.workload}' job, not '{workload}'")
        config = loaded.config
    if not isinstance(config, module.CONFIG):
        raise UserError(f"config is a {type(config).__name__}; workload {workload!r} takes a {module.CONFIG.__name__}")
    return config.replace(**overrides) if overrides else config


def run(workload: str, config: Config | None = None, *, job: str | Path | None = None, address: str | None = None,
        fresh: bool = False, verbose: bool = False, **overrides: Any) -> Result:
    """Run a workload (`sample`, `train`, `tune`, `zoo`, `weightgen`, `study`, `cmt`, `gradvar`,
    `quickstart`) and return its `Result`. `config`/`job`/`overrides`: see `make_config`; `address`:
    a Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray, or the Ray this
    process already started)."""
    config = make_config(workload, config, job=job, **overrides)
    summary = execute(workload, config, address=address, verbose=verbose, fresh=fresh)
    return Result(workload, config, config.run_dir, summary)


def _location(run: Result | str | Path, *rel: str) -> str:
    base = run.run_dir if isinstance(run, Result) else str(run)
    return storage.join(base, *rel) if rel else base


def read_samples(run: Result | str | Path, *, dataset: bool = False):
    """The samples of a `raygen sample` run (its Result or run directory): a pyarrow Table in id
    order with columns sample_id, seed, sample (flat; `shape` is in the metadata) and label for
    class-conditional models; `dataset=True`: a ray.data.Dataset streaming the parts instead."""
    from raygen.parts import PartStore

    store = PartStore.at(_location(run, "samples"))
    if not store.part_paths():
        raise UserError(f"no samples at {store.uri}; pass a `raygen sample` run (its result or run directory)")
    return store.ray_dataset() if dataset else store.dataset().to_table().sort_by(store.id_column)


def sample_metadata(run: Result | str | Path) -> dict[str, Any]:
    """The sampler settings every part records: model, sampler, sigmas, shape, seed, data_range, ..."""
    from raygen.parts import PartStore

    return PartStore.at(_location(run, "samples")).metadata()


def read_zoo(run: Result | str | Path, *, dataset: bool = False):
    """The members of a zoo (a `raygen zoo` run, its parts/, or a `raygen weightgen` run that
    collected its own zoo): (params [N, P] float32 tensor, other columns by name, metadata with the
    architecture and layout); `dataset=True`: a ray.data.Dataset of the parts."""
    from raygen.weightgen.store import PARTS, read_zoo as read, zoo_store

    location = _location(run)
    loc = storage.resolve(location)
    if not storage.exists(loc.child(PARTS)) and storage.exists(loc.child("zoo", PARTS)):
        location = _location(run, "zoo")  # a weightgen run's zoo stage (raygen.workloads.zoo.stage_config)
    return zoo_store(location).ray_dataset() if dataset else read(location)


def read_weights(run: Result | str | Path, *, dataset: bool = False):
    """The weights a `raygen weightgen` run generated, as `read_zoo` returns them."""
    from raygen.weightgen.store import read_zoo as read, zoo_store

    location = _location(run, "generated")
    return zoo_store(location).ray_dataset() if dataset else read(location, "generated set")
