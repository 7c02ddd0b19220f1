"""Job files: YAML with `workload:`, an optional `cluster:` section and the workload's flat config.

    workload: sample          # which workload (raygen/workloads/__init__.py)
    name: sample_mog          # every other top-level key is a field of the workload's Config
    n_samples: 20000
    cluster:                  # only read by `raygen submit` (runtime_env, entrypoint_num_cpus, ...)
      entrypoint_num_cpus: 1
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import yaml

from raygen.config import Config, parse_overrides
from raygen.errors import UserError
from raygen.workloads import workload_module


@dataclasses.dataclass
class Job:
    path: Path
    workload: str
    config: Config
    cluster: dict[str, Any]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML lets the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_job_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"job file {str(path)!r} not found; job files live in jobs/ (e.g. jobs/quickstart.yaml)")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except UserError as exc:
        raise UserError(f"job file {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"job file {str(path)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict) or "workload" not in raw:
        raise UserError(f"job file {str(path)!r} must be a mapping with a 'workload:' key")
    if not isinstance(raw["workload"], str):
        raise UserError(f"job file {str(path)!r}: 'workload:' must be one workload name, got {raw['workload']!r}")
    return raw


def load_job(path: str | Path, overrides: Iterable[str] = ()) -> Job:
    """Read, override (`key=value` strings) and validate a job file."""
    raw = read_job_file(path)
    workload = raw.pop("workload")
    cluster = raw.pop("cluster", None) or {}
    if not isinstance(cluster, dict):
        raise UserError(f"job file {str(path)!r}: 'cluster:' must be a mapping")
    values = {**raw, **parse_overrides(overrides)}
    config = workload_module(workload).CONFIG.from_dict(values)
    return Job(Path(path), workload, config, cluster)
