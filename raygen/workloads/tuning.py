"""Ray Tune plumbing shared by the Tune workloads: run an experiment, resume it safely, show progress.

`fit(...)` runs one Tuner inside the run directory (local, NFS or bucket). Resuming never executes
anything read from the run directory: run directories live in shared buckets and get handed
around, and Tune's own resume (`Tuner.restore`) unpickles `tuner.pkl`, the searcher state and the
trials from it, so a planted pickle would run its code. Instead:

- raygen keeps its own record of every trial that ended (its trainable returned or the scheduler
  stopped it; not an errored trial, nor one cut off by Ctrl-C), as JSON under
  `<experiment>/raygen_trials/<key>.json`: the trial's config, every metrics row it reported, and
  the run's settings hash (`RunDir.settings_hash`). `<key>` hashes the settings and the trial config.
- Every session starts a fresh Tuner with the same search space and seeds, so it proposes the same
  trials. A trial whose record exists replays the recorded rows with `tune.report` (no compute);
  any other trial (never run, errored, or cut off by a kill) runs again from its start.
- A record made with other settings (a hand-edited `config.json` let the run directory pass)
  refuses the run: the provenance that gates reuse is the one stored with the results.

The trust boundary is therefore "JSON is data": a hostile run directory can at worst make a report
wrong, never run code. A trial checkpoint that a trainable reads back within one session (Tune's
retry after a worker died) is its own file, loaded with `torch.load(weights_only=True)`.
As trials end it prints `<label>: k/N ended (..s; latest: ...)` (counted from this session's
start), so a long study is never a minute of silence; Ray's own console output stays off unless verbose.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from raygen import storage as store
from raygen.errors import UserError

RECORDS = "raygen_trials"
# What Tune adds to every reported row (besides AUTO_RESULT_KEYS): not the trainable's metrics.
_TUNE_KEYS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "__duplicate__"}


def trial_key(settings: str, config: dict[str, Any]) -> str:
    """The record name of a trial: its config under the run's settings."""
    text = json.dumps({"settings": settings, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    """A reported value as JSON data (numpy scalars unwrapped; NaN kept: a diverged trial reports it),
    or None for what is not a plain value."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    return value if isinstance(value, (bool, int, float, str)) else None


class _Records:
    """The trial records of one experiment, read and written as JSON through pyarrow.fs."""

    def __init__(self, storage: dict[str, Any], name: str, settings: str):
        fs = storage.get("storage_filesystem") or pafs.LocalFileSystem()
        path = f"{storage['storage_path'].rstrip('/')}/{name}/{RECORDS}"
        self.loc = store.Location(fs, path, path)
        self.settings = settings

    def load(self) -> dict[str, list[dict[str, Any]]]:
        """key -> recorded metrics rows, for the trials recorded under these settings.

        A record made under other settings refuses the run; an unreadable one is ignored (that
        trial runs again)."""
        found = {}
        for entry in store.listdir(self.loc):
            key = entry.removesuffix(".json")
            try:
                record = json.loads(store.read_bytes(self.loc.child(entry)))
                other, history = record["settings"], record["history"]
                if not isinstance(history, list) or record["key"] != key:
                    continue
            except (ValueError, KeyError, TypeError, OSError):
                continue
            if other != self.settings:
                raise UserError(
                    f"the trials recorded in {store.display(self.loc.uri)} were made with other settings than this "
                    "run's (was its config.json edited?); re-run with the settings they were made with, pick another "
                    "name (--set name=...), or start it over with --fresh")
            found[key] = history
        return found

    def write(self, config: dict[str, Any], history: list[dict[str, Any]]) -> None:
        key = trial_key(self.settings, config)
        record = {"key": key, "settings": self.settings, "config": config, "history": history}
        store.write_bytes(self.loc.child(f"{key}.json"), json.dumps(record, default=str).encode())


class _TrialProgress(tune.Callback):
    """One line per ended trial; records each trial that ended without error (driver side)."""

    def __init__(self, label: str, total: int, describe: Callable[[dict[str, Any], dict[str, Any]], str] | None,
                 records: _Records, progress: bool):
        self.label, self.total, self.describe, self.records, self.progress = label, total, describe, records, progress
        self.ended, self.start = 0, time.monotonic()
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = {k: _plain(v) for k, v in result.items() if k not in _TUNE_KEYS}
        row = {k: v for k, v in row.items() if v is not None}
        self.rows.setdefault(trial.trial_id, []).append(row)

    def _ended(self, trial, outcome: str) -> None:
        self.ended += 1
        if not self.progress:
            return
        latest = outcome
        if outcome == "finished" and self.describe is not None and trial.last_result:
            latest = self.describe(trial.config, trial.last_result)
        print(f"{self.label}: {self.ended}/{self.total} ended ({time.monotonic() - self.start:.0f}s; latest: {latest})",
              file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        rows = self.rows.pop(trial.trial_id, [])
        # Tune sets `done` when the trainable returned or a scheduler (ASHA) stopped the trial; a trial
        # "completed" because the experiment was interrupted (Ctrl-C) has not: it must run again.
        if rows and (trial.last_result or {}).get("done"):
            self.records.write(trial.config, rows)
        self._ended(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.rows.pop(trial.trial_id, None)
        self._ended(trial, "FAILED")


def _replaying(trainable, settings: str, recorded: dict[str, list[dict[str, Any]]]):
    """`trainable`, except that a trial recorded under `settings` reports its recorded rows instead of running."""

    def replay_or_run(config):
        rows = recorded.get(trial_key(settings, config))
        if rows is None:
            return trainable(config)
        for row in rows:
            tune.report(row)
        return None

    replay_or_run.__name__ = getattr(trainable, "__name__", "trainable")
    if hasattr(trainable, "_resources"):  # `tune.with_resources` keeps its request as this attribute
        replay_or_run._resources = trainable._resources
    return replay_or_run


def outcomes(results) -> Iterator[tuple[Any, str | None]]:
    """Each trial's Tune result with its error as one line (None when it finished)."""
    for result in results:
        yield result, None if result.error is None else str(result.error).strip().splitlines()[-1]


def refuse_failures(errors: list[str], what: str) -> None:
    """A run with failed trials is one UserError line naming the first error."""
    if errors:
        raise UserError(f"{len(errors)} {what} trial(s) failed; first error: {errors[0]}")


def fit(trainable, *, storage: dict[str, Any], name: str, param_space: dict[str, Any], total: int,
        label: str = "trials", tune_config: tune.TuneConfig | None = None, progress: bool = True,
        describe: Callable[[dict[str, Any], dict[str, Any]], str] | None = None):
    """Run the experiment `name` under `storage` (`run_dir.ray_storage()`), reusing the trials it already
    recorded under the same settings; returns (ResultGrid, seconds).

    `total`: the number of trials, for the progress line. `describe(config, last_result)`: a short
    text about a finished trial (e.g. "ratio=0.4 arm=generated acc=0.91").
    """
    storage = dict(storage)
    settings = storage.pop("settings_hash", "")
    records = _Records(storage, name, settings)
    recorded = records.load()
    callbacks = [_TrialProgress(label, total, describe, records, progress)]
    start = time.perf_counter()
    tuner = tune.Tuner(_replaying(trainable, settings, recorded), param_space=param_space, tune_config=tune_config,
                       run_config=tune.RunConfig(name=name, verbose=0, callbacks=callbacks, **storage))
    results = tuner.fit()
    return results, time.perf_counter() - start
