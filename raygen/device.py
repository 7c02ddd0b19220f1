"""The one device rule: a worker, trial or actor computes on the GPU Ray assigned to its process.

Ray sets CUDA_VISIBLE_DEVICES of a process that reserved GPUs to the ids it assigned, so the first
of them is `cuda:0` there; a process that reserved none (`ray.get_gpu_ids()` empty) computes on the
CPU, even on a GPU node. Fractional reservations (`gpus_per_actor=0.5`) get the same id in several
processes, which then share that GPU. A GPU reserved but not visible to torch (a CPU-only torch
build, a missing driver) is refused with one line naming the config key and the node: the run
would otherwise succeed at CPU speed while the GPU idles.

`describe` says what ran where for reports ("cpu", "cuda:0 (NVIDIA H200)"); `probe` asks one Ray
task holding a unit's resources, so the driver records and prints it (and fails fast) before any
work is written. A heterogeneous cluster may give other units other GPU models: the probe's is the
one recorded.
"""

from __future__ import annotations

import socket

from raygen.errors import UserError, find_user_error


def assigned_gpu_ids() -> list:
    """The GPU ids Ray assigned to this process; empty outside Ray or when it reserved none."""
    import ray

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def device_for(key: str, requested: float, off: str = ""):
    """The torch device this process computes on; `key` is the config key that reserved
    `requested` GPUs per unit (named when they cannot be used, with `off`, the setting that runs
    without one: `<key>=0` by default)."""
    import torch

    ids = assigned_gpu_ids()
    if not ids:
        if requested > 0:
            raise UserError(f"config key '{key}' reserves {requested:g} GPU per unit but Ray assigned none to this "
                            f"process on node {socket.gethostname()}; run it as a Ray task with num_gpus={requested:g}")
        return torch.device("cpu")
    require_cuda(f"config key '{key}' reserves {requested:g} GPU per unit and Ray assigned GPU "
                 f"{','.join(map(str, ids))}", off or f"{key}=0")
    return torch.device("cuda", 0)


def require_cuda(reserved: str, off: str) -> None:
    """Refuse, in one line, a GPU that `reserved` (what reserved it) gives this process but torch cannot
    see; `off` is the setting that runs without one."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UserError(f"{reserved} on node {socket.gethostname()}, but torch {torch.__version__} ({build}) sees "
                        f"no CUDA device there; install CUDA torch on that node (make TORCH_SPEC=...) or set {off}")


def describe(device) -> str:
    """"cpu", or "cuda:0 (NVIDIA H200)": for reports and part metadata."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _describe_here(key: str, requested: float, off: str) -> str:
    return describe(device_for(key, requested, off))


def on_unit(fn, *args, num_cpus: float, num_gpus: float):
    """`fn(*args)` in one Ray task holding a unit's resources (Ray must be up); a UserError raised
    there is raised here as the one line it is."""
    import ray

    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(fn)
    try:
        return ray.get(task.remote(*args))
    except ray.exceptions.RayTaskError as exc:  # its str is the remote traceback; the cause is the line
        raise (find_user_error(exc.cause) or exc) from None


def probe(key: str, num_cpus: float, num_gpus: float, off: str = "") -> str:
    """`describe` of the device a unit reserving these resources computes on ("cpu" without a task
    when it reserves no GPU); refuses, before any work, a GPU that torch cannot see there."""
    if num_gpus <= 0:
        return "cpu"
    return on_unit(_describe_here, key, num_gpus, off, num_cpus=num_cpus, num_gpus=num_gpus)


def trial_resources(cpus: float, gpus: float, keys: str = "cpus_per_trial/gpus_per_trial") -> tuple[dict, str]:
    """A Tune trial's resources ({"cpu", "gpu"}), checked against the nodes like every resource key
    (`runtime.check_fits`), and `describe` of the device a trial computes on."""
    from raygen import runtime

    runtime.check_fits({"CPU": cpus, "GPU": gpus}, keys)
    return {"cpu": cpus, "gpu": gpus}, probe(keys.split("/")[-1], cpus, gpus)
