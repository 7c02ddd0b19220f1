"""One driver for chunked parallel output: samples, zoo members and generated weights.

A workload describes its output (`Output`: a part store, its `Chunks` layout, the metadata every
part carries) and a chunk worker: a class built once per worker process (`worker(**kwargs)`) whose
call turns a chunk number into that chunk's rows, `chunk -> pyarrow.Table` (or `(table, figures)`
with a few per-chunk numbers that the driver sums, e.g. MMDGS's PSD repairs). Everything else is
here, written once:

- `settle`: the settings the parts are made with, recorded in the store's manifest by the first run;
  a re-run with other settings is refused, keys decided by the first run (a timed chunk size) are
  kept;
- `run_chunks`: resume (only missing or damaged chunks run; damaged ones are said), one Ray task
  per chunk at most `workers` at a time, the part written atomically by the task that made it,
  progress whose rate counts only this run's rows, a metrics line per chunk, and the exactly-once
  check from the parts' footers at the end.

A chunk's rows must depend on the chunk only (a retried or re-run chunk rewrites the same part),
which is what makes the output independent of the number of workers.

Why plain tasks and not Ray Data (`map_batches` over a dataset of chunk ids): Ray Data cost ~15 ms
per task of driver-side planning and bookkeeping, which on 2 cores also kept a second worker from
scaling (1.05x); an actor pool costs a fresh process per run (seconds before the first part). See
`benchmarks/sampler_throughput.py`. (Queueing each worker's next task behind its running one, to
skip the driver's round trip between chunks, measured no better.)
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from raygen.errors import UserError
from raygen.parts import Chunks, PartStore, Scan, part_name
from raygen.storage import first_line


@dataclasses.dataclass(frozen=True)
class Output:
    """Where a fan-out writes: the store, its layout, and the metadata of every part."""

    store: PartStore
    layout: Chunks
    metadata: dict[str, Any]


@dataclasses.dataclass
class Outcome:
    """What one `run_chunks` call did: `rows` written by this run (resumed rows not counted)."""

    resumed: int
    rows: int
    seconds: float
    busy_seconds: float = 0.0  # summed over chunks: each chunk's compute + write
    first_part_s: float | None = None
    figures: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.rows / self.seconds if self.rows else None


def settle(store: PartStore, settings: dict[str, Any], *,
           decided_once: dict[str, Callable[[], Any]] | None = None) -> dict[str, Any]:
    """The settings as recorded in the store's manifest: written by the first run, checked by a re-run.

    `decided_once`: keys whose value the first run decides (asked only then, e.g. a timed chunk
    size) and a re-run keeps, whatever it asks for. Any other key that differs refuses the re-run."""
    decided_once = decided_once or {}
    previous = store.read_manifest()
    if previous is not None:
        changed = sorted(k for k in set(settings) | set(previous)
                         if k not in decided_once and previous.get(k) != settings.get(k))
        if changed:
            raise UserError(f"{store.uri} holds parts made with other settings ({', '.join(changed)}); "
                            "use a new name or --fresh")
        return previous
    recorded = {**settings, **{k: decide() for k, decide in decided_once.items()}}
    store.write_manifest(recorded)
    return recorded


MAX_PARTS = 1_000_000  # the driver holds a few bytes per part (scan, pending list): ~40 MB at this bound


def check_layout(layout: Chunks, keys: str) -> None:
    """Refuse a layout of more than MAX_PARTS parts before anything is written (10^12 samples in
    small chunks would list and scan billions of parts)."""
    if layout.count > MAX_PARTS:
        raise UserError(f"{keys}: {layout.n} rows in chunks of {layout.chunk_size} make {layout.count} parts, more "
                        f"than {MAX_PARTS}; raise the chunk size to at least {-(-layout.n // MAX_PARTS)} or split the "
                        "work into several runs")


def run_chunks(output: Output, worker: Callable[..., Callable[[int], Any]], kwargs: dict[str, Any], *,
               what: str, workers: int, run_dir=None, num_cpus: float = 1, num_gpus: float = 0,
               log_rate_as: str | None = None, scan: Scan | None = None) -> Outcome:
    """Write every missing or damaged part of `output` with `worker(**kwargs)`, then verify exactly-once.

    `what` labels the progress line ("sampled", "zoo members"); each finished chunk logs
    `<log_rate_as or what>_per_s`, `chunk_seconds` and `rows_this_run` (the rate's numerator: rows
    resumed from an earlier run are done, not counted) to `run_dir` (when given). `scan`: the
    caller's `store.scan(layout)` when it has one already (one footer read per part, not two)."""
    from raygen.progress import Progress

    store, layout = output.store, output.layout
    check_layout(layout, "rows")
    scan = scan or store.scan(layout)
    pending = scan.pending
    resumed = layout.count - len(pending)
    if scan.damaged:
        print(f"re-writing {len(scan.damaged)} damaged part(s): "
              + "; ".join(f"{part_name(c)}: {why}" for c, why in sorted(scan.damaged.items())[:5]))
    if resumed and pending:
        print(f"resuming: {resumed}/{layout.count} parts already written, {len(pending)} to write")
    rows = layout.rows_in(pending)
    outcome = Outcome(resumed=resumed, rows=rows, seconds=0.0)
    start = time.perf_counter()
    if pending:
        progress = Progress(layout.n, what, every_s=5.0, already=layout.n - rows)
        rate_key = f"{log_rate_as or what}_per_s"
        for row in chunk_results(output, pending, worker, kwargs, workers=workers, num_cpus=num_cpus,
                                 num_gpus=num_gpus):
            outcome.first_part_s = outcome.first_part_s or time.perf_counter() - start
            progress.update(row.pop("rows"))
            seconds = row.pop("seconds")
            outcome.busy_seconds += seconds
            for k, v in row.items():
                outcome.figures[k] = outcome.figures.get(k, 0) + v
            if run_dir is not None:
                run_dir.log(progress.done, **{rate_key: progress.rate(), "chunk_seconds": seconds,
                                              "rows_this_run": progress.done - progress.already})
    outcome.seconds = time.perf_counter() - start
    store.verify(layout)
    return outcome


# ---------------------------------------------------------------------- the Ray side

_per_process: dict[str, Any] = {}


def per_process(key: str, build: Callable[[], Any]) -> Any:
    """`build()`'s result, made once in this process for `key` (a run's token) and kept for the next calls.

    Why: Ray reuses a task's worker process for later tasks of the same job, whereas an actor pool
    starts a fresh process (import torch, build the model: about 2 CPU-seconds) for every run. A
    worker holds one key at a time, so a finished run's model is dropped when the next run's first
    task arrives."""
    if key not in _per_process:
        _per_process.clear()
        _per_process[key] = build()
    return _per_process[key]


def write_chunk(chunk: int, *, output: Output, worker: Callable[..., Callable[[int], Any]], kwargs: dict,
                token: str) -> dict[str, float]:
    """A Ray task: this process's `worker(**kwargs)` makes chunk `chunk`'s rows; the part is written
    here, where they are (they never travel to the driver). Returns the chunk's summary."""
    start = time.perf_counter()
    made = per_process(token, lambda: worker(**kwargs))(chunk)
    table, figures = made if isinstance(made, tuple) else (made, {})
    try:
        output.store.write(chunk, table, output.layout, output.metadata)
    except OSError as exc:  # read-only directory, full disk, unreachable bucket: the run stops, a re-run resumes
        raise UserError(f"cannot write {part_name(chunk)} to {output.store.uri} ({first_line(exc)}); make it "
                        "writable (or reachable) and re-run the same command: written parts are kept") from None
    return {"rows": table.num_rows, "seconds": time.perf_counter() - start, **figures}


def chunk_results(output: Output, pending: list[int], worker: Callable[..., Callable[[int], Any]],
                  kwargs: dict, *, workers: int, num_cpus: float = 1, num_gpus: float = 0) -> Iterator[dict]:
    """Each pending chunk's summary (`write_chunk`), as chunks finish.

    Each chunk is one Ray task, at most `workers` at a time; each worker process builds its `worker`
    once per call of this function (`per_process`). The arguments are put in the object store once,
    not once per task (a zoo's metadata holds its base weights and task definitions). A task whose
    process dies is retried (`max_retries=-1`). An error in a chunk cancels the others and is
    raised; on Ctrl-C the chunks end with the process."""
    import ray

    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=-1)(write_chunk)
    shared = {k: ray.put(v) for k, v in (("output", output), ("kwargs", kwargs))}
    todo, running = list(pending), []
    token = uuid.uuid4().hex
    try:
        while todo or running:
            while todo and len(running) < workers:
                running.append(task.remote(todo.pop(0), worker=worker, token=token, **shared))
            done, _ = ray.wait(running, num_returns=1)
            for ref in done:
                running.remove(ref)
                yield ray.get(ref)
    except KeyboardInterrupt:
        # The process is stopping, and Ray ends the tasks of a driver that exits. A force-cancel here
        # raced the running chunk's reply (the terminal's SIGINT reaches the workers too) and failed a
        # check in Ray's core worker: the driver died with exit 1 instead of 130, 1 run in 12.
        raise
    except BaseException:  # an error, or the caller stopped: do not leave chunks drawing in the background
        for ref in running:
            ray.cancel(ref, force=True)
        raise
