"""`raygen tune` on a real local Ray: report, per-trial results, same seed -> same result."""

import inspect
import json

import pytest

from raygen.hypergrad.hypergradient import SKETCHED, SOLVERS
from raygen.workloads.tune import SOLVER_KNOBS, TuneHypergradConfig, run, solver_kwargs
from raygen.errors import UserError
from raygen.jobs import load_job


@pytest.mark.ray
def test_tune_job_writes_report_and_same_seed_trials_agree(tmp_path, ray_local):
    config = TuneHypergradConfig.from_dict(
        dict(
            name="tiny", storage_path=str(tmp_path), task="weight_decay",
            solvers=["nystrom_pcg", "cg"], ranks=[5], rhos=[0.1], iters=[5], alphas=[0.1], tols=[1e-4],
            sketch_every=[2], outer_lrs=[1.0], unrolls=[10], seeds=[0],
            num_samples=2, max_outer_steps=3, scheduler="fifo", checkpoint_every=2,
            baselines=["optuna"], baseline_samples=1,
        )
    )
    summary = run(config)
    run_dir = tmp_path / "tiny"
    for name in ("report.md", "report.json", "config.json", "val_loss.png", "metrics.jsonl", "trials.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir())
    assert set(summary["methods"]) == {"nystrom_pcg", "cg", "optuna"}
    report = (run_dir / "report.md").read_text()
    for method in ("nystrom_pcg", "cg", "optuna"):
        assert f"| {method} |" in report

    trials = json.loads((run_dir / "trials.json").read_text())
    assert len(trials) == 2 * 2 + 1
    for trial in trials:
        assert trial["error"] is None
        assert [h["outer_step"] for h in trial["history"]] == [1, 2, 3]
        assert (tmp_path / trial["path"]).joinpath("result.json").is_file()  # Tune's per-trial results
    for solver in ("nystrom_pcg", "cg"):
        a, b = [t for t in trials if t["method"] == solver]
        assert a["config"] == b["config"]  # one sampled setting, run twice
        strip = lambda t: [{k: v for k, v in h.items() if k != "hypergrad_seconds"} for h in t["history"]]
        assert strip(a) == strip(b)
    pcg = [t for t in trials if t["method"] == "nystrom_pcg"][0]
    cg = [t for t in trials if t["method"] == "cg"][0]["history"]
    assert pcg["history"][-1]["val_loss"] != cg[-1]["val_loss"]  # the solvers really differ (rho = 0.1 vs none)
    # sketch_every = 2: fresh rank-5 sketches on outer steps 1 and 3, reused on step 2
    assert [h["sketch_hvps_saved"] for h in pcg["history"]] == [0, 5, 5]
    assert "tol=0.0001" in pcg["setting"] and "sketch_every=2" in pcg["setting"]


def test_solver_choices_are_the_registry_and_knobs_are_solver_keywords():
    assert set(SOLVER_KNOBS) == set(SOLVERS)
    assert SKETCHED == {s for s, knobs in SOLVER_KNOBS.items() if "sketch_every" in knobs}
    trial = {"rank": 5, "rho": 0.1, "iters": 7, "alpha": 0.01, "tol": 1e-3, "sketch_every": 2}
    for name, solver in SOLVERS.items():
        keywords = set(solver_kwargs(name, trial))
        params = inspect.signature(solver).parameters
        assert keywords <= set(params), (name, keywords)
        # every required keyword of the solver is tuned
        assert {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and p.default is p.empty} <= keywords


def test_job_file_parses_and_bad_values_are_one_line_errors():
    job = load_job("jobs/tune_hypergrad.yaml")
    assert job.workload == "tune" and isinstance(job.config, TuneHypergradConfig)
    with pytest.raises(UserError, match="solvers"):
        load_job("jobs/tune_hypergrad.yaml", ["solvers=[nystrom, lbfgs]"])
    with pytest.raises(UserError, match="rhos"):
        load_job("jobs/tune_hypergrad.yaml", ["rhos=[0.1, -1]"])
    with pytest.raises(UserError, match="sketch_every"):
        load_job("jobs/tune_hypergrad.yaml", ["sketch_every=[0]"])
    with pytest.raises(UserError, match="tols"):
        load_job("jobs/tune_hypergrad.yaml", ["tols=[]"])
    with pytest.raises(UserError, match="baselines"):
        load_job("jobs/tune_hypergrad.yaml", ["task=distill"])
    assert load_job("jobs/tune_hypergrad.yaml", ["task=distill", "baselines=[]"]).config.task == "distill"
    with pytest.raises(UserError, match="rho_scale"):
        load_job("jobs/tune_hypergrad.yaml", ["rho_scale=relative"])
    with pytest.raises(UserError, match="power_iters"):
        load_job("jobs/tune_hypergrad.yaml", ["power_iters=0"])
    # the paper's form by default: per-example weights, rho relative to λ_max, Adam outer, the reference CG arm
    config = job.config
    assert (config.per, config.rho_scale, config.outer_optimizer) == ("example", "lambda_max", "adam")
    assert "reference_cg" in config.solvers and not config.reset_inner


class _Planted:
    """A pickle that runs code when loaded: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    import pickle

    path.write_bytes(pickle.dumps(_Planted(marker)))


def test_a_planted_pickle_in_a_trial_checkpoint_runs_no_code(tmp_path):
    import pickle

    from raygen.workloads.tune import load_state

    marker = tmp_path / "ran"
    _plant(tmp_path / "state.pt", marker)
    pickle.loads((tmp_path / "state.pt").read_bytes()).close()  # the plant is real: unpickling runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match="state.pt is damaged or holds pickled objects"):
        load_state(tmp_path)
    assert not marker.exists()


@pytest.mark.ray
def test_rerun_executes_nothing_from_the_run_dir_and_reuse_follows_the_recorded_settings(tmp_path, ray_local):
    """Re-running reads only config.json and raygen's JSON trial records: every other file of the
    first run (Tune's tuner.pkl, experiment and searcher state, params.pkl, checkpoints) is replaced
    by a code-running pickle, and none of it runs. A recorded trial is replayed, not recomputed
    (its measured seconds come back identical); a trial without a record runs again."""
    values = dict(name="safe", storage_path=str(tmp_path / "runs"), task="weight_decay", solvers=["nystrom", "cg"],
                  ranks=[5], rhos=[0.1], iters=[5], outer_lrs=[1.0], unrolls=[10], seeds=[0], num_samples=1,
                  max_outer_steps=2, scheduler="fifo", checkpoint_every=1, baselines=[])
    run(TuneHypergradConfig.from_dict(values))
    run_dir = tmp_path / "runs" / "safe"
    first = {t["method"]: t for t in json.loads((run_dir / "trials.json").read_text())}
    records = sorted((run_dir / "hypergrad" / "raygen_trials").glob("*.json"))
    assert len(records) == 2
    cg_record = next(r for r in records if json.loads(r.read_text())["config"]["solver"] == "cg")
    cg_record.unlink()  # as if the run had been killed before this trial ended
    marker = tmp_path / "code-ran"
    planted = 0
    for path in run_dir.rglob("*"):
        if path.is_file() and path.name != "config.json" and path.parent.name != "raygen_trials":
            _plant(path, marker)
            planted += 1
    assert planted > 10 and (run_dir / "hypergrad" / "tuner.pkl").exists()

    run(TuneHypergradConfig.from_dict(values))
    assert not marker.exists(), "a re-run executed code from the run directory"
    second = {t["method"]: t for t in json.loads((run_dir / "trials.json").read_text())}
    assert second["nystrom"]["history"] == first["nystrom"]["history"]  # replayed, timings included
    drop = lambda t: [{k: v for k, v in h.items() if k != "hypergrad_seconds"} for h in t["history"]]
    assert drop(second["cg"]) == drop(first["cg"])  # recomputed, same results
    assert second["cg"]["history"] != first["cg"]["history"]

    # config.json edited by hand to match new settings: the trial records still know theirs
    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**saved, "max_outer_steps": 3}))
    with pytest.raises(UserError, match="were made with other settings"):
        run(TuneHypergradConfig.from_dict({**values, "max_outer_steps": 3}))
