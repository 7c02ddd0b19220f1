"""raygen.workloads.tuning on a real local Ray Tune: a re-run executes nothing from the run directory
and reuses exactly the trials recorded under the same settings (the path tune, study, cmt and gradvar share)."""

from __future__ import annotations

import json
import pickle

import pytest

from raygen.errors import UserError


class _Planted:
    """A pickle that runs code when loaded: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_everywhere(run_dir, marker) -> int:
    """Replace every file but config.json and raygen's JSON trial records with a code-running pickle."""
    planted = 0
    for path in run_dir.rglob("*"):
        if path.is_file() and path.name != "config.json" and path.parent.name != "raygen_trials":
            path.write_bytes(pickle.dumps(_Planted(marker)))
            planted += 1
    return planted


def _trainable(calls_dir):
    def trainable(config):
        from ray import tune

        (calls_dir / f"{config['x']}-{len(list(calls_dir.iterdir()))}").write_text("")  # one file per real run
        for step in range(3):
            tune.report({"score": config["x"] * 10 + step, "nan_ok": float("nan")})

    return trainable


@pytest.mark.ray
def test_fit_replays_recorded_trials_and_runs_no_code_from_the_run_dir(tmp_path, ray_local):
    from ray import tune

    from raygen.workloads import tuning

    calls = tmp_path / "calls"
    calls.mkdir()
    storage = {"storage_path": str(tmp_path / "run"), "settings_hash": "s1"}
    space = {"x": tune.grid_search([1, 2, 3])}

    def fit(settings="s1"):
        results, _ = tuning.fit(_trainable(calls), storage={**storage, "settings_hash": settings}, name="exp",
                                param_space=space, total=3, progress=False)
        return sorted((r.config["x"], [row["score"] for row in r.metrics_dataframe.to_dict("records")])
                      for r in results)

    first = fit()
    assert first == [(1, [10, 11, 12]), (2, [20, 21, 22]), (3, [30, 31, 32])]
    assert len(list(calls.iterdir())) == 3
    records = sorted((tmp_path / "run" / "exp" / "raygen_trials").glob("*.json"))
    assert len(records) == 3
    json.loads(records[0].read_text())  # plain JSON
    next(r for r in records if json.loads(r.read_text())["config"] == {"x": 2}).unlink()  # killed before it ended
    marker = tmp_path / "code-ran"
    assert _plant_everywhere(tmp_path / "run", marker) > 5

    assert fit() == first
    assert not marker.exists(), "a re-run executed code from the run directory"
    assert sorted(p.name.split("-")[0] for p in calls.iterdir()) == ["1", "2", "2", "3"]  # only x=2 ran again

    with pytest.raises(UserError, match="were made with other settings than this run's"):
        fit(settings="s2")


@pytest.mark.ray
def test_a_gradvar_rerun_reads_no_pickle(tmp_path, ray_local):
    from raygen.workloads.gradvar import GradvarConfig, run

    config = GradvarConfig.from_dict({"name": "gv", "storage_path": str(tmp_path), "models": ["linear"],
                                      "estimators": ["lr"], "lrs": [3e-3], "seeds": [0], "units": 4,
                                      "batch_size": 20, "iterations": 10, "eval_every": 5, "variance_batches": 2,
                                      "iw_samples": 2, "validation": 40, "test": 40})
    run(config)
    first = json.loads((tmp_path / "gv" / "trials.json").read_text())
    marker = tmp_path / "code-ran"
    assert _plant_everywhere(tmp_path / "gv", marker) > 5
    run(config)
    assert not marker.exists()
    assert json.loads((tmp_path / "gv" / "trials.json").read_text()) == first
