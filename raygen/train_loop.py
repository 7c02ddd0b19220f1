"""The shared training scaffold: every raygen trainer is a plain `train_func(config)` built from it.

A trainer (SADM diffusion in `raygen.diffusion.train` is the worked example; the weight-diffusion
trainers build on the same pieces) supplies only what is its own: its modules and optimisers, its
batches, one micro-step, and what a checkpoint exports for its users. Everything else lives here
once, and behaves the same in a plain process and inside Ray Train's `TorchTrainer`:

    TrainState     modules, optimisers, EMAs, the torch generator and the step, with
                   `state_dict` / `load_state_dict` (exactly what a checkpoint restores).
    TrainRun       one process's view of a run: Accelerate (devices, DDP, mixed precision,
                   gradient accumulation), rank / world size, the checkpoint store and, on rank 0,
                   the `RunDir` (metrics, TensorBoard, images) -- all chosen once, at start.
    CheckpointStore  where checkpoints live: always `<run dir>/checkpoint_<step>/`, written by rank 0
                   through the RunDir API (`upload_dir` puts the `.complete` marker last), so a
                   bucket works, a half-written checkpoint is never resumed, the newest `keep` stay,
                   and a plain run and a Ray Train run resume from each other's checkpoints.
                   `TrainRun` picks one implementation at start:
                   - `RunDirStore` (plain process).
                   - `RayTrainStore` (inside TorchTrainer): the same files, the other ranks send
                     their generator states to rank 0 and receive the restored state from it
                     (torch.distributed); Ray Train gets metrics only. Its `shard(name)` is the
                     worker's Ray Data shard (`TorchTrainer(datasets={name: ...})`).
    fit            the loop: gradient accumulation, NaN stop (all ranks together), throughput and
                   logging windows, image grids, checkpoints; returns the last logged metrics.
    launch         the driver side: `train_func(config)` in this process (num_workers=0) or on
                   Ray Train workers (TorchTrainer with storage in the run dir, max_failures),
                   printing rank 0's progress lines here; returns (last metrics, latest
                   checkpoint's name in the run dir).

Checkpoint directory `checkpoint_<step:06d>/`:

    state.pt           TrainState.state_dict() without the generator (written by rank 0)
    rng_rank<r>.pt     rank r's generator state (every rank; a resume with more workers gives the
                       new ranks their fresh streams, a resume with fewer drops the extra ones)
    ...                what the trainer's `export(state, directory)` writes on rank 0 so that the
                       checkpoint is usable on its own, e.g. denoiser.json + ema.pt

Writing a trainer (a sketch; see `raygen.diffusion.train.train_func` for the real one):

    def train_func(config: dict) -> dict:
        cfg = MyConfig.from_dict(config)
        run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints, use_gpu=cfg.use_gpu,
                       mixed_precision=cfg.mixed_precision, grad_accum=cfg.grad_accum)
        restored = run.store.load(run.rank)           # a state dict, or None on a fresh start
        start = restored["step"] if restored else 0
        batches = my_batches(run.store.shard("train"), start)   # endless iterator of tensor tuples
        state = TrainState(modules={"net": seeded(cfg.seed, build_net)},
                           optimizers={"opt": ...}, emas={"net": EMA(...)},
                           generator=torch_generator(cfg.seed, Stream.INIT, run.rank))
        if restored is not None:
            state.load_state_dict(restored)           # before prepare: plain modules load their dicts
        run.prepare(state)
        schedule = Schedule(steps=cfg.steps, log_every=..., checkpoint_every=..., grad_accum=...)
        return fit(run, state, batches, my_step, schedule, export=..., images=...)

`my_step(state, batch, step) -> dict` does one micro-step (forward, backward through
`run.accelerator`, optimiser steps) on `batch` (already on the device) and returns scalars: tensors
are averaged over ranks when logged, floats are logged as they are, and "loss" is checked for
NaN/inf after every micro-step. Randomness comes from `state.generator` only, so a resume is
bit-exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import pickle
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from raygen.config import Config
from raygen.errors import UserError

CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}\d{{6,}}")
STATE_FILE = "state.pt"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def seeded(seed: int, build: Callable[[], Any]) -> Any:
    """Build modules with a fixed seed without touching the caller's global RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def ray_train_active() -> bool:
    """True inside a Ray Train worker (a TorchTrainer's train function)."""
    try:
        import ray.train

        ray.train.get_context()
        return True
    except (ImportError, RuntimeError):
        return False


# ------------------------------------------------------------------ state


@dataclasses.dataclass
class TrainState:
    """Everything a resume restores. `modules` and `optimizers` are what the step uses (wrapped by
    Accelerate after `TrainRun.prepare`); `module(name)` is the plain module (EMA, checkpoints)."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    generator: torch.Generator
    emas: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> raygen.diffusion.EMA
    step: int = 0

    def __post_init__(self) -> None:
        self._plain = dict(self.modules)

    def module(self, name: str) -> nn.Module:
        """The unwrapped module `name` (DDP and mixed-precision wrappers share its parameters)."""
        return self._plain[name]

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self._plain.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "emas": {k: e.state_dict() for k, e in self.emas.items()},
            "generator": self.generator.get_state(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; a state without "generator" (a rank the checkpoint did not have) keeps its stream."""
        for key, group in (("modules", self._plain), ("optimizers", self.optimizers), ("emas", self.emas)):
            missing = set(group) ^ set(state.get(key, {}))  # a checkpoint of another trainer or format
            if missing:
                raise UserError(f"checkpoint does not match this trainer: {key} differ in {sorted(missing)}; "
                                "resume with the settings the checkpoint was made with, or use another name")
            for name, obj in group.items():
                obj.load_state_dict(state[key][name])
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.step = state["step"]


# ------------------------------------------------------------------ checkpoint stores


def load_weights(path: Path, fix: str, map_location: str = "cpu") -> Any:
    """`torch.load(weights_only=True)`: tensors, numbers and containers of them, never code (files in
    run directories and handed-in checkpoints come from anyone). Any failure is one line naming the
    file and `fix`."""
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of a pickle it is about to refuse
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only reader says the same for garbage and for pickles
        raise UserError(f"{path} is damaged or holds pickled objects rather than plain tensors (raygen never "
                        f"loads code from a file); {fix}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, missing, not a torch file: one line, not a traceback
        raise UserError(f"{path} is damaged ({type(exc).__name__}); {fix}") from None


def _read_checkpoint(directory: Path, rank: int, fix: str | None = None, settings: str | None = None) -> dict[str, Any]:
    """The checkpoint's state; a damaged file is one line naming it and `fix` (default: the resume
    advice, for the run's own checkpoints). With `settings` (the resuming run's `RunDir.settings_hash`),
    a checkpoint recorded under other settings is refused: reuse follows what is stored with the
    results, not `config.json` alone (a hand edit of it let results of other settings pass)."""
    fix = fix or f"delete {directory.name} to resume from the checkpoint before it"
    state = load_weights(directory / STATE_FILE, fix)
    recorded = state.pop("settings", None)  # None: written before checkpoints recorded it
    if settings is not None and recorded is not None and recorded != settings:
        raise UserError(f"{directory.name} was made with other settings than this run's (was its config.json "
                        "edited?); re-run with the settings it was made with, pick another name (--set name=...), "
                        "or start it over with --fresh")
    if (directory / _rng_file(rank)).exists():
        state["generator"] = load_weights(directory / _rng_file(rank), fix)
    return state


class CheckpointStore(Protocol):
    def load(self, rank: int) -> dict[str, Any] | None:
        """The latest checkpoint's state dict for this rank (generator included if it has one), or None."""

    def save(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        """Persist checkpoint `step` from this rank's `directory` (all ranks call it)."""

    def shard(self, name: str) -> Any | None:
        """This worker's Ray Data shard of dataset `name`, or None when data are loaded in-process."""


class RunDirStore:
    """Checkpoints as `<run dir>/checkpoint_<step>/` through the RunDir API (local disk or a bucket)."""

    def __init__(self, run_dir, keep: int):
        self.run_dir, self.keep = run_dir, keep

    def _names(self) -> list[str]:
        """Checkpoints and the remains of interrupted saves (e.g. a local copy's `checkpoint_X.tmp-PID`)."""
        return [n for n in self.run_dir.listdir() if n.startswith(CHECKPOINT_PREFIX)]

    def _complete(self) -> list[str]:
        # exact names only: a worker killed while copying leaves a temp dir that may hold the marker
        return [n for n in self._names() if CHECKPOINT_NAME.fullmatch(n) and self.run_dir.is_complete(n)]

    def latest(self) -> str | None:
        """The name of the newest complete checkpoint."""
        complete = self._complete()
        return complete[-1] if complete else None

    @contextlib.contextmanager
    def fetched(self) -> Iterator[Path | None]:
        """A local copy of the newest complete checkpoint (a directory named like it), or None."""
        latest = self.latest()
        if latest is None:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix=f"raygen-{latest}-") as tmp:
            yield self.run_dir.download_dir(latest, Path(tmp) / latest)

    def load(self, rank: int) -> dict[str, Any] | None:
        with self.fetched() as directory:
            return None if directory is None else _read_checkpoint(directory, rank,
                                                                   settings=self.run_dir.settings_hash)

    def save(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        name = checkpoint_name(step)
        self.run_dir.upload_dir(directory, name)
        keep = set(self._complete()[-self.keep:])
        for old in self._names():  # older ones and the remains of interrupted saves
            if old not in keep:
                self.run_dir.delete(old)

    def shard(self, name: str) -> None:
        return None


class RayTrainStore:
    """Inside TorchTrainer: rank 0 keeps the checkpoints exactly as a plain run does (`RunDirStore`);
    the other ranks exchange their files with it over torch.distributed, so only rank 0 touches storage.

    Ray Train is not handed the checkpoints (`ray.train.report(checkpoint=...)`): it lists one for
    the next `fit()` only once its controller has collected every worker's report and rewritten
    checkpoint_manager_snapshot.json, seconds after the files are in place. A Ctrl-C in between left
    e.g. checkpoint_000050/ that the re-run did not see (it restarted from step 0), and a plain
    re-run never saw Ray's checkpoints at all (they have no `.complete` marker). Here a checkpoint
    is complete when its marker is written, and the next run of either kind resumes from it.
    """

    def __init__(self, local: RunDirStore | None):
        self.local = local  # rank 0's; None on the other ranks

    def load(self, rank: int) -> dict[str, Any] | None:
        from accelerate.utils import broadcast_object_list

        payload = None
        if self.local is not None:
            with self.local.fetched() as directory:
                if directory is not None:  # the weights and every rank's generator; not the export
                    payload = (directory.name, {p.name: p.read_bytes() for p in directory.iterdir()
                                                if p.name == STATE_FILE or p.name.startswith("rng_rank")})
        payload = broadcast_object_list([payload])[0]
        if payload is None:
            return None
        name, files = payload
        with tempfile.TemporaryDirectory(prefix=f"raygen-{name}-") as tmp:
            directory = Path(tmp) / name
            directory.mkdir()
            for file, data in files.items():
                (directory / file).write_bytes(data)
            # rank 0 checks the recorded settings (only it has the run dir); its error ends the group
            settings = self.local.run_dir.settings_hash if self.local is not None else None
            return _read_checkpoint(directory, rank, settings=settings)

    def save(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        from accelerate.utils import gather_object

        mine = {} if self.local is not None else {p.name: p.read_bytes() for p in directory.iterdir()}
        for files in gather_object([mine]):  # the other ranks' generator files, to rank 0
            for file, data in files.items():
                (directory / file).write_bytes(data)
        if self.local is not None:
            self.local.save(step, directory, metrics)

    def shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)


# ------------------------------------------------------------------ the run


class TrainRun:
    """Accelerate, rank/world, the checkpoint store (chosen here, once) and rank 0's RunDir."""

    def __init__(self, config: Config, *, keep_checkpoints: int, use_gpu: bool = False,
                 mixed_precision: str = "auto", grad_accum: int = 1):
        from accelerate import Accelerator

        from raygen.device import require_cuda
        from raygen.rundir import RunDir

        if use_gpu:  # never a silent CPU run
            require_cuda("config key 'use_gpu' asks for a GPU per training worker", "use_gpu=false")
        precision = ("bf16" if use_gpu else "no") if mixed_precision == "auto" else mixed_precision
        self.accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=grad_accum,
                                       cpu=not use_gpu)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        self.run_dir = RunDir(config) if self.rank == 0 else None
        self.where = self.run_dir.uri if self.run_dir is not None else config.run_dir
        local = RunDirStore(self.run_dir, keep_checkpoints) if self.run_dir is not None else None
        self.store: CheckpointStore = RayTrainStore(local) if ray_train_active() else local

    def prepare(self, state: TrainState) -> None:
        """Wrap the state's modules and optimisers for the devices / DDP (after restoring it)."""
        names_m, names_o = list(state.modules), list(state.optimizers)
        prepared = self.accelerator.prepare(*state.modules.values(), *state.optimizers.values())
        if len(names_m) + len(names_o) == 1:
            prepared = (prepared,)
        modules = prepared[:len(names_m)]
        if self.world == 1:
            # Ray Train initialises torch.distributed even for one worker, and Accelerate then wraps the
            # model in a one-rank DDP whose gradient all-reduce is pure overhead; unwrapping keeps the
            # mixed-precision forward (keep_fp32_wrapper)
            modules = [self.accelerator.unwrap_model(m) for m in modules]
        state.modules = dict(zip(names_m, modules))
        state.optimizers = dict(zip(names_o, prepared[len(names_m):]))
        for ema in state.emas.values():  # updated from the prepared modules: on their device
            ema.model.to(self.device)

    def reduce(self, value: torch.Tensor) -> float:
        """The mean over ranks: every rank gets the same number."""
        if self.world == 1:  # no collective: a one-rank all-reduce through gloo costs ~60 us a call
            return value.detach().item()
        return self.accelerator.reduce(value.detach().to(self.device), "mean").item()

    def save(self, state: TrainState, metrics: dict[str, Any],
             export: Callable[[TrainState, Path], None] | None = None) -> None:
        """Write checkpoint `state.step`: every rank its generator, rank 0 the state and the export
        (all ranks call it)."""
        name = checkpoint_name(state.step)
        with tempfile.TemporaryDirectory(prefix=f"raygen-{name}-") as tmp:
            directory = Path(tmp) / name
            directory.mkdir()
            full = state.state_dict()
            torch.save(full.pop("generator"), directory / _rng_file(self.rank))
            if self.rank == 0:
                full["settings"] = self.run_dir.settings_hash  # what a resume checks (`_read_checkpoint`)
                torch.save(full, directory / STATE_FILE)
                if export is not None:
                    export(state, directory)
                self.run_dir.flush()  # metrics up to this checkpoint persist with it (a resume continues them)
            self.store.save(state.step, directory, metrics)

    def close(self) -> None:
        if self.run_dir is not None:
            self.run_dir.close()


# ------------------------------------------------------------------ the loop


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Loop cadences, in optimiser updates (one update = `grad_accum` micro-steps)."""

    steps: int
    log_every: int
    checkpoint_every: int
    images_every: int = 0  # 0: no image grids
    grad_accum: int = 1


StepFn = Callable[[TrainState, tuple, int], dict[str, Any]]


class _Window:
    """Throughput over one logging window: images/s and the share of time spent waiting for data."""

    def __init__(self):
        self.start, self.data_wait, self.images = time.perf_counter(), 0.0, 0

    def close(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        out = {"images_per_s": self.images / elapsed, "data_wait_frac": self.data_wait / elapsed}
        self.__init__()
        return out


def fit(
    run: TrainRun,
    state: TrainState,
    batches: Iterator[tuple],
    step_fn: StepFn,
    schedule: Schedule,
    *,
    export: Callable[[TrainState, Path], None] | None = None,
    images: Callable[[TrainState, tuple], torch.Tensor] | None = None,
    progress: dict[str, str] | None = None,
    diverged_hint: str = "lower the learning rate",
    unit: str = "img",
) -> dict[str, Any]:
    """Train from `state.step` to `schedule.steps`; returns the last logged metrics + step, resumed_from.

    images(state, batch): a [N, C, H, W] batch in the data range, logged as a grid (rank 0).
    progress: printed line's label -> metric key, e.g. {"loss": "loss"}; the rows/s (metric
    `images_per_s`) are always shown, labelled `unit`/s.
    diverged_hint: what to change, in the one-line error raised when the loss becomes NaN/inf.
    """
    start = state.step
    resumed_from = start or None
    last_saved = resumed_from
    log = run.run_dir
    if log is not None:
        log.truncate_log(start)
    modules = list(state.modules.values())
    first_opt = next(iter(state.optimizers.values()))
    window, last = _Window(), {}
    for step in range(start, schedule.steps):
        for _ in range(schedule.grad_accum):
            t0 = time.perf_counter()
            batch = tuple(t.to(run.device) for t in next(batches))
            window.data_wait += time.perf_counter() - t0
            window.images += batch[0].shape[0] * run.world
            with run.accelerator.accumulate(*modules):
                stats = step_fn(state, batch, step)
            loss = run.reduce(stats["loss"])  # every rank sees the same value, so all stop together
            if not math.isfinite(loss):
                kept = (f"The last good checkpoint (step {last_saved}) is kept in {run.where}" if last_saved
                        else "No checkpoint was written yet")
                raise UserError(f"training diverged: loss is {loss} at step {step + 1}; {diverged_hint}. {kept}")
        state.step = done = step + 1
        if done % schedule.log_every == 0 or done == schedule.steps:
            last = {k: run.reduce(v) if torch.is_tensor(v) else v for k, v in stats.items()}
            last.update(lr=first_opt.param_groups[0]["lr"], **window.close())
            if log is not None:
                log.log(done, **last)
                shown = "  ".join(f"{label} {last[key]:.4f}" for label, key in (progress or {"loss": "loss"}).items())
                _say(f"step {done}/{schedule.steps}  {shown}  {last['images_per_s']:.0f} {unit}/s")
        if (log is not None and images is not None and schedule.images_every
                and (done % schedule.images_every == 0 or done == schedule.steps)):
            log.log_images(done, "samples", images(state, batch))
        if done % schedule.checkpoint_every == 0 or done == schedule.steps:
            run.save(state, {**last, "step": done, "resumed_from": resumed_from}, export)
            last_saved = done
    return {**last, "step": schedule.steps, "resumed_from": resumed_from}


# ------------------------------------------------------------------ the driver


def _say(line: str) -> None:
    """Rank 0's progress line: printed here, or on a Ray Train worker sent to the driver (`launch`)."""
    print(line, flush=True)


def _on_worker(train_func: Callable[[dict], dict], outbox, config: dict) -> dict:
    """TorchTrainer's train function: `train_func(config)`, putting rank 0's progress lines and its
    result on the driver's queue `outbox` as ("line", text) and ("result", metrics). A worker's own
    stdout reaches the driver only with `-v` (Ray's log_to_driver); Ray Train's Result.metrics are
    those of its own checkpoints, which it is not given here (`RayTrainStore`)."""
    import ray.train

    def say(line: str) -> None:
        outbox.put(("line", line))

    global _say
    _say = say
    result = train_func(config)
    if ray.train.get_context().get_world_rank() == 0:
        outbox.put(("result", result))
    return result


def check_workers_fit(num_workers: int, use_gpu: bool) -> None:
    """Refuse (local Ray) or announce (cluster) Ray Train workers that cannot be placed; Ray would wait forever.

    One worker takes 1 CPU (+ 1 GPU with use_gpu), Ray Train's default; workers may spread over nodes."""
    import ray

    from raygen import runtime

    runtime.check_fits({"CPU": 1, "GPU": 1 if use_gpu else 0}, "use_gpu" if use_gpu else "num_workers")
    total = ray.cluster_resources()
    if num_workers > total.get("CPU", 0) or (use_gpu and num_workers > total.get("GPU", 0)):
        runtime.check_fits({"CPU": num_workers, "GPU": num_workers if use_gpu else 0}, "num_workers")


def _fit_showing_progress(trainer, outbox) -> dict[str, Any]:
    """`trainer.fit()` on a helper thread while this (main) thread prints the progress lines that
    rank 0 puts on `outbox` (`_on_worker`); returns rank 0's result (its last metrics).

    On the main thread, TorchTrainer.fit() replaces Python's SIGINT handler with its own, which aborts
    the run and leaves the process with exit status 1 and no message (and stays installed after the
    run). On another thread it installs none, so Ctrl-C stays a KeyboardInterrupt here, which the CLI
    reports as "stopped; re-run ..." (exit 130); leaving the process stops Ray's controller and workers.
    """
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="raygen-train-fit", daemon=True)
    thread.start()
    while True:
        running = thread.is_alive()
        waiting = outbox.qsize()
        for kind, item in outbox.get_nowait_batch(waiting) if waiting else ():
            if kind == "line":
                print(item, flush=True)
            else:
                outcome[kind] = item
        if not running:
            break
        thread.join(timeout=0.25)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result", {})


def launch(train_func: Callable[[dict], dict], config: Config, run_dir, *, num_workers: int, keep_checkpoints: int,
           max_failures: int = 0, use_gpu: bool = False, datasets: Callable[[], dict[str, Any]] | None = None,
           verbose: bool = False) -> tuple[dict[str, Any], str | None]:
    """Run `train_func(config.to_dict())` here (num_workers = 0) or on `num_workers` Ray Train workers.

    Ray Train's run dir is `<storage_path>/<name>`, i.e. `run_dir` itself; checkpoints are rank 0's
    (`RayTrainStore`), so they sit where a plain run's do and a re-run of either kind resumes from
    them. `datasets()` (called once Ray is up) gives TorchTrainer's datasets: each worker reads its
    shard with `run.store.shard(name)`. Returns (the last metrics train_func returned, rank 0's
    under Ray Train; the latest complete checkpoint's name or None).
    """
    store = RunDirStore(run_dir, keep_checkpoints)
    if num_workers == 0:
        return train_func(config.to_dict()), store.latest()
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from raygen import runtime, storage
    from raygen.errors import find_user_error

    runtime.init(verbose=verbose)
    check_workers_fit(num_workers, use_gpu)
    where = storage.resolve(config.storage_path)
    outbox = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        functools.partial(_on_worker, train_func, outbox),
        # workers must find the run dir whatever their cwd: an absolute path or the URI
        train_loop_config={**config.to_dict(), "storage_path": where.uri},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=config.name, storage_path=where.path, storage_filesystem=where.fs,
                             failure_config=FailureConfig(max_failures=max_failures)),
        datasets=datasets() if datasets is not None else None,
    )
    try:
        metrics = _fit_showing_progress(trainer, outbox)
    except Exception as exc:
        # Ray wraps worker errors (WorkerGroupError, its message cut short); a user mistake (NaN, a
        # corrupt image) is in some worker's failure and stays one line
        failures = [exc, *getattr(exc, "worker_failures", {}).values()]
        user_error = next(filter(None, map(find_user_error, failures)), None)
        if user_error is not None:
            raise UserError(str(user_error)) from None
        raise
    finally:
        outbox.shutdown()
    return metrics, store.latest()
