"""`raygen gradvar` end to end on a real local Ray: a tiny grid, the report read back."""

import json

import pytest
import yaml

from raygen.errors import UserError
from raygen.workloads import WORKLOADS, workload_module
from raygen.workloads.gradvar import GradvarConfig, run

TINY = dict(models=["linear"], estimators=["lr", "optimal"], lrs=[0.003], seeds=[0, 1], units=4, batch_size=10,
            iterations=20, eval_every=10, variance_batches=3, iw_samples=3, baseline_hidden=8, validation=20, test=20)


def test_tiny_grid_writes_report_with_one_trial_per_setting(tmp_path, ray_local, capsys):
    config = GradvarConfig.from_dict({"name": "gv", "storage_path": str(tmp_path), **TINY})
    summary = run(config)
    err = capsys.readouterr().err
    assert "trials: 4/4 ended" in err and "linear/optimal lr=0.003 seed=1: val ELBO" in err
    report = json.loads((tmp_path / "gv" / "report.json").read_text())
    assert report["trials"] == 4 and report["failed"] == [] and report["device"] == "cpu"  # no gpus_per_trial
    rows = {r["estimator"]: r for r in report["table"]}
    assert set(rows) == {"lr", "optimal"}
    for r in rows.values():
        assert r["finished"] == 2 and r["lr"] == 0.003
        assert r["curve"]["iteration"] == [10, 20]
        assert r["val_elbo"][0] < 0 and r["test_iw_bound"][0] < 0 and r["final_grad_var"][0] > 0
    claims = [c["claim"] for c in report["pattern"]]
    assert claims == ["LR has the worst validation ELBO"]  # only the estimators that ran are compared
    for name in ("report.md", "grad_variance.png", "val_elbo.png", "trials.json", "metrics.jsonl"):
        assert (tmp_path / "gv" / name).exists(), name
    assert "| linear | optimal | 0.003 |" in (tmp_path / "gv" / "report.md").read_text()
    trials = json.loads((tmp_path / "gv" / "trials.json").read_text())["trials"]
    same_seed = [t for t in trials if t["estimator"] == "lr"]
    assert len({t["seed"] for t in same_seed}) == 2  # two seeds, two different runs
    assert summary["report"].endswith("report.md")


def test_job_file_parses_and_bad_values_are_one_line_errors():
    job = yaml.safe_load(open(WORKLOADS["gradvar"].default_job))
    assert job.pop("workload") == "gradvar"
    config = workload_module("gradvar").CONFIG.from_dict(job)
    assert config.lrs == [0.001, 0.003]
    for key, value, message in (("estimators", ["lr", "reinforce"], "unknown 'reinforce'"),
                                ("units", 0, "must be >= 1"), ("iw_samples", 0, "must be >= 1"),
                                ("models", ["linear", "linear"], "without repeats"), ("lrs", [0.0], "must be > 0"),
                                ("variance_batches", 1, "must be >= 2")):
        with pytest.raises(UserError, match=message) as err:
            GradvarConfig.from_dict({**job, key: value})
        assert "\n" not in str(err.value) and key in str(err.value)


def test_only_published_variance_claims_are_judged():
    from raygen.workloads.gradvar import compare

    rows = [{"model": "linear", "estimator": e, "finished": True, "log10_grad_var": (v,), "val_elbo": (elbo,)}
            for e, v, elbo in [("lr", 0.0, -50.0), ("lr_baseline", -2.0, -40.0), ("nvil", -3.0, -39.0),
                               ("leg", -2.0, -39.5), ("optimal", -4.4, -39.0)]]
    verdicts = {c["claim"]: c["holds"] for c in compare(rows, ["linear"])}
    assert verdicts["var LR ≫ LR+C"] is True and verdicts["var LR+C > LR+C+IDB (NVIL)"] is True
    # LEG 2.4 decades above optimal: measured, but "LEG ≈ optimal" is no published claim, so not judged
    assert verdicts["var LEG ≈ optimal"] is None and verdicts["var LR+C+IDB (NVIL) ≳ LEG"] is None
    assert verdicts["LR has the worst validation ELBO"] is True
