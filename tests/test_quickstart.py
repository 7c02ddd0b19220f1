"""The main job end to end at minimal sizes on local Ray, and its reuse of finished stages."""

import json

import pytest

from raygen.errors import UserError
from raygen.jobs import load_job
from tests.helpers import QUICKSTART_TINY as TINY


def test_tiny_quickstart_runs_end_to_end_and_reuses_stages(tmp_path, ray_local):
    from raygen.workloads import quickstart

    job = load_job("jobs/quickstart.yaml", TINY + [f"storage_path={tmp_path}", "name=qs"])
    first = quickstart.run(job.config)
    run_dir = tmp_path / "qs"
    assert (run_dir / "report.md").exists() and (run_dir / "study" / "report.json").exists()
    assert (run_dir / "study" / "accuracy_vs_ratio.png").stat().st_size > 0
    assert (run_dir / "study" / "samples.png").stat().st_size > 0
    assert not first["stages"]["train"]["reused"] and first["stages"]["sample"]["parts_reused"] == 0
    table = first["table"]
    assert {(r["ratio"], r["arm"]) for r in table} == {(0.0, "generated"), (0.0, "control"),
                                                       (0.1, "generated"), (0.1, "control")}
    assert all(0 <= r["clean_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 for r in table)
    # ratio 0: both arms train on the same rows with the same seed -> identical models
    r0 = {r["arm"]: r for r in table if r["ratio"] == 0.0}
    assert r0["generated"]["clean_acc"] == r0["control"]["clean_acc"]
    trials = json.loads((run_dir / "study" / "trials.json").read_text())
    share = {(t["ratio"], t["arm"]): t["replaced_share"] for t in trials}
    assert share[(0.0, "generated")] == 0 and 0.09 < share[(0.1, "generated")] < 0.11
    assert "study/accuracy_vs_ratio.png" in (run_dir / "report.md").read_text()

    second = quickstart.run(job.config)
    assert second["stages"]["train"]["reused"]
    assert second["stages"]["train"]["checkpoint"] == first["stages"]["train"]["checkpoint"]
    assert second["stages"]["sample"]["parts_reused"] == second["stages"]["sample"]["parts"] == 2
    assert second["table"] == first["table"]

    # other settings: refused, naming the key, and the finished run is left as it was
    report = (run_dir / "report.md").read_text()
    changed = load_job("jobs/quickstart.yaml", TINY + [f"storage_path={tmp_path}", "name=qs", "sadm_lambda=0.1"])
    with pytest.raises(UserError, match=r"other settings \(sadm_lambda: 0\.0 -> 0\.1\)"):
        quickstart.run(changed.config)
    assert (run_dir / "report.md").read_text() == report


def test_quickstart_bad_keys_are_one_line_errors():
    with pytest.raises(UserError, match="'train_steps'"):
        load_job("jobs/quickstart.yaml", ["train_steps=0"])
    with pytest.raises(UserError, match="'covariance'"):
        load_job("jobs/quickstart.yaml", ["covariance=dense"])
    with pytest.raises(UserError, match="unknown config key 'nope'"):
        load_job("jobs/quickstart.yaml", ["nope=1"])
