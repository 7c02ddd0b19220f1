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


@pytest.mark.ray
def test_a_cmt_rerun_reads_no_pickle(tmp_path, ray_local):
    from raygen.workloads.cmt import CmtConfig, run

    config = CmtConfig.from_dict(dict(
        name="cm", storage_path=str(tmp_path), data="synthetic", n_train=[4], splits=1, methods=["target_only"],
        depths=[2], coupling_hidden=[8], classifier_hidden=[8], weight_decays=[0.01], epochs=2, eval_every=1,
        max_augment=50, n_sources=3, source_size=40, test_size=40,
    ))
    run(config)
    first = json.loads((tmp_path / "cm" / "report.json").read_text())
    marker = tmp_path / "code-ran"
    assert _plant_everywhere(tmp_path / "cm", marker) > 5
    run(config)
    assert not marker.exists()
    second = json.loads((tmp_path / "cm" / "report.json").read_text())
    assert second.get("table", second.get("trials")) == first.get("table", first.get("trials"))


@pytest.mark.ray
def test_a_study_rerun_reads_no_pickle(tmp_path, ray_local):
    """A study re-run reads its mixes (Parquet) and trial records (JSON); everything else of the
    first run, Tune's state included, is replaced by a code-running pickle."""
    import io

    import numpy as np
    from PIL import Image

    from raygen.data import digits_arrays
    from raygen.workloads.study import StudyConfig, run

    images, labels = digits_arrays()
    for i in range(400):  # the "generated" set: an image folder of real digits, about 40 per class
        folder = tmp_path / "generated" / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray((images[i, 0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        (folder / f"{i}.png").write_bytes(buffer.getvalue())
    config = StudyConfig.from_dict(dict(name="st", storage_path=str(tmp_path / "runs"),
                                        generated=str(tmp_path / "generated"), ratios=[0.0, 0.2], seeds=[0],
                                        epochs=1, feature_steps=5, diversity_images=40))
    run(config)
    run_dir = tmp_path / "runs" / "st"
    first = json.loads((run_dir / "trials.json").read_text())
    assert json.loads((run_dir / "report.json").read_text())["device"] == "cpu"  # no gpus_per_trial
    marker = tmp_path / "code-ran"
    planted = 0
    for path in run_dir.rglob("*"):  # the mixes stay: a re-run reads them as Parquet
        if path.is_file() and path.name != "config.json" and "raygen_trials" not in path.parts \
                and "mixes" not in path.relative_to(run_dir).parts:
            path.write_bytes(pickle.dumps(_Planted(marker)))
            planted += 1
    assert planted > 5
    run(config)
    assert not marker.exists()
    strip = lambda trials: [{k: v for k, v in t.items() if k != "path"} for t in trials]
    assert strip(json.loads((run_dir / "trials.json").read_text())) == strip(first)


def test_only_trials_that_really_ended_are_recorded(tmp_path):
    """Tune calls on_trial_complete also for trials it stops because the experiment was interrupted
    (Ctrl-C) or that never started; only a trial whose last result is `done` (its trainable returned,
    or ASHA stopped it) may be replayed later."""
    from types import SimpleNamespace

    from raygen.workloads.tuning import _Records, _TrialProgress

    records = _Records({"storage_path": str(tmp_path)}, "exp", "s1")
    progress = _TrialProgress("t", 3, None, records, progress=False)
    finished = SimpleNamespace(trial_id="a", config={"x": 1}, last_result={"score": 2, "done": True})
    cut_off = SimpleNamespace(trial_id="b", config={"x": 2}, last_result={"score": 1, "done": False})
    never_ran = SimpleNamespace(trial_id="c", config={"x": 3}, last_result={})
    for trial in (finished, cut_off):
        for score in (1, 2):
            progress.on_trial_result(0, [], trial, {"score": score, "done": False, "trial_id": trial.trial_id})
    for trial in (finished, cut_off, never_ran):
        progress.on_trial_complete(0, [], trial)
    assert list(records.load().values()) == [[{"score": 1}, {"score": 2}]]
