"""Ray Tune plumbing shared by the Tune workloads: resume-or-start an experiment, show progress.

`fit(...)` runs one Tuner inside the run directory (local, NFS or bucket): an unfinished
experiment of the same name is restored (errored trials re-run), otherwise a new one starts.
As trials end it prints `<label>: k/N ended (..s; latest: ...)` (counted from this session's start), so a long study is never a
minute of silence; Ray's own console output stays off unless verbose.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from ray import tune



class _TrialProgress(tune.Callback):
    """One line per ended trial. Tune pickles its RunConfig with the experiment, so a restored run
    keeps this callback; it holds no stream, only counts."""

    def __init__(self, label: str, total: int, describe: Callable[[dict[str, Any], dict[str, Any]], str] | None):
        self.label, self.total, self.describe = label, total, describe
        self.ended, self.start = 0, time.monotonic()

    def setup(self, **info) -> None:
        self.ended, self.start = 0, time.monotonic()

    def _ended(self, trial, outcome: str) -> None:
        self.ended += 1
        latest = outcome
        if outcome == "finished" and self.describe is not None and trial.last_result:
            latest = self.describe(trial.config, trial.last_result)
        print(f"{self.label}: {self.ended}/{self.total} ended ({time.monotonic() - self.start:.0f}s; latest: {latest})",
              file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "FAILED")


def fit(trainable, *, storage: dict[str, Any], name: str, param_space: dict[str, Any], total: int,
        label: str = "trials", tune_config: tune.TuneConfig | None = None, progress: bool = True,
        describe: Callable[[dict[str, Any], dict[str, Any]], str] | None = None):
    """Run or resume the experiment `name` under `storage` (`run_dir.ray_storage()`); returns (ResultGrid, seconds).

    `total`: the number of trials, for the progress line. `describe(config, last_result)`: a short
    text about a finished trial (e.g. "ratio=0.4 arm=generated acc=0.91").
    """
    experiment = f"{storage['storage_path'].rstrip('/')}/{name}"
    filesystem = storage.get("storage_filesystem")
    callbacks = [_TrialProgress(label, total, describe)] if progress else None
    start = time.perf_counter()
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):  # RunDir checked the settings: resume
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(name=name, verbose=0, callbacks=callbacks, **storage))
    results = tuner.fit()
    return results, time.perf_counter() - start
