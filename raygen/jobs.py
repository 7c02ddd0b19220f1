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

from raygen.config import Config, check_size, parse_overrides, short
from raygen.errors import UserError
from raygen.workloads import workload_module


@dataclasses.dataclass
class Job:
    path: Path
    workload: str
    config: Config
    cluster: dict[str, Any]


# A job file is a page of settings; anything near this size is a mistake (or a data file).
MAX_JOB_FILE_BYTES = 1024**2
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML lets the last one win silently) and a key
    that is not a plain value. Merge keys (`<<: *defaults`) keep SafeLoader's meaning: keys written
    in the mapping override merged ones, so only the written keys must be unique."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict, set)):
                raise UserError(f"a key at line {key_node.start_mark.line + 1} is a {type(key).__name__}, not a "
                                "name; write keys as plain words (name: value)")
            if key in seen:
                raise UserError(f"key {short(key)} is given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# The project's jobs/ files, shipped inside the package (links to jobs/ in a checkout, copies in a
# wheel), so that `raygen sample` and `raygen run jobs/quickstart.yaml` work wherever raygen is installed.
PACKAGED_JOBS = Path(__file__).parent / "jobs_default"


def resolve_job_path(path: str | Path) -> Path:
    """`path` itself if it exists; else, for `jobs/<name>.yaml`, the copy shipped with raygen."""
    path = Path(path)
    if not path.exists() and path.parent == Path("jobs") and (PACKAGED_JOBS / path.name).is_file():
        return PACKAGED_JOBS / path.name
    return path


def read_job_file(path: str | Path) -> dict[str, Any]:
    path = resolve_job_path(path)
    if not path.is_file():
        shipped = ", ".join(sorted(f"jobs/{p.name}" for p in PACKAGED_JOBS.glob("*.yaml")))
        raise UserError(f"job file {str(path)!r} not found; give a YAML job file, or one of raygen's own: {shipped}")
    if path.stat().st_size > MAX_JOB_FILE_BYTES:
        raise UserError(f"job file {str(path)!r} is {path.stat().st_size} bytes; a job file holds settings "
                        f"(at most {MAX_JOB_FILE_BYTES // 1024} KiB): point to data by path instead")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"job file {str(path)!r} is not UTF-8 text (binary, or saved as UTF-16?); "
                        "save it as UTF-8 YAML") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except UserError as exc:
        raise UserError(f"job file {str(path)!r}: {exc}") from None
    except RecursionError:
        raise UserError(f"job file {str(path)!r} nests too deeply to be settings; write flat key: value "
                        "lines") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"job file {str(path)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict) or "workload" not in raw:
        raise UserError(f"job file {str(path)!r} must be a mapping with a 'workload:' key")
    if not isinstance(raw["workload"], str):
        raise UserError(f"job file {str(path)!r}: 'workload:' must be one workload name, got {short(raw['workload'])}")
    return raw


def load_job(path: str | Path, overrides: Iterable[str] = ()) -> Job:
    """Read, override (`key=value` strings) and validate a job file."""
    raw = read_job_file(path)
    workload = raw.pop("workload")
    cluster = raw.pop("cluster", None) or {}
    if not isinstance(cluster, dict):
        raise UserError(f"job file {str(path)!r}: 'cluster:' must be a mapping")
    check_size(cluster, "cluster")
    values = {**raw, **parse_overrides(overrides)}
    config = workload_module(workload).CONFIG.from_dict(values)
    return Job(Path(path), workload, config, cluster)
