"""`raygen cmt` end to end on a real local Ray: trials, report read back, same numbers as in-process."""

import json

import numpy as np
import pytest

from raygen.errors import UserError
from raygen.jobs import load_job
from raygen.workloads.cmt import CmtConfig, load_panel, plan, run, run_trial


def test_tiny_synthetic_run_writes_a_report_that_matches_in_process_trials(tmp_path, ray_local):
    config = CmtConfig.from_dict(dict(
        name="tiny", storage_path=str(tmp_path), data="synthetic", n_train=[4], splits=2,
        methods=["cmt", "oracle", "target_only"], depths=[2], coupling_hidden=[8], classifier_hidden=[8],
        weight_decays=[0.01], epochs=4, eval_every=2, max_augment=300, n_sources=3, source_size=60, test_size=100,
    ))
    summary = run(config)
    run_dir = tmp_path / "tiny"
    for name in ("report.md", "report.json", "config.json", "relative_mse.png"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["trials"] == 2 * 3 == summary["trials"]
    assert report["device"] == "cpu"  # no gpus_per_trial
    (row,) = report["table"]
    assert row["target"] == "target" and row["n"] == 4 and set(row["cells"]) == {"cmt", "oracle", "target_only"}
    assert all(cell[2] == 2 for cell in row["cells"].values())  # two splits per mean
    markdown = (run_dir / "report.md").read_text()
    assert "| target | 4 |" in markdown and "target-only / oracle MSE ratio" in markdown
    assert report["cmt_hindsight"]["mean"] <= row["cells"]["cmt"][0]  # hindsight can only do better

    # a trial on Ray gives exactly what the same spec gives in-process (same split, same seed)
    panel = load_panel(config)
    selected = {(s["method"], s["split"]): s for s in report["selected"]}
    for spec in plan(config, panel):
        evals = run_trial({"trial": spec}, panel=panel, job=config.to_dict())
        best = min(evals, key=lambda e: e["nested_loo_mse"])  # the selection score
        mine = selected[(spec["method"], spec["split"])]
        assert mine["test_mse"] == pytest.approx(best["test_mse"], rel=1e-9)
        assert mine["nested_loo_mse"] == pytest.approx(best["nested_loo_mse"], rel=1e-9)
        assert mine["loocv_mse"] == pytest.approx(best["loocv_mse"], rel=1e-9)  # stored beside it
        assert mine["epoch"] == best.get("epoch", 0)
        if spec["method"] == "cmt":
            assert [e["epoch"] for e in evals] == [2, 4]


def test_job_files_parse_and_bad_values_are_one_line_errors():
    gasoline = load_job("jobs/cmt_gasoline.yaml")
    assert gasoline.workload == "cmt" and isinstance(gasoline.config, CmtConfig)
    assert load_job("jobs/cmt_synthetic.yaml").config.data == "synthetic"
    with pytest.raises(UserError, match="'oracle' needs the true mechanism"):
        load_job("jobs/cmt_gasoline.yaml", ["methods=[cmt, oracle]"])
    with pytest.raises(UserError, match="methods"):
        load_job("jobs/cmt_gasoline.yaml", ["methods=[cmt, magic]"])
    with pytest.raises(UserError, match="n_train"):
        load_job("jobs/cmt_gasoline.yaml", ["n_train=[1]"])
    with pytest.raises(UserError, match="targets"):
        load_job("jobs/cmt_synthetic.yaml", ["targets=[JAPAN]"])
    paper = load_job("jobs/cmt_gasoline.yaml", ["splits=10", "epochs=500", "depths=[4,8,16]", "coupling_hidden=[10,100]",
                                                "classifier_hidden=[10,20]", "weight_decays=[0.001,0.01,0.1]"]).config
    specs = plan(paper, load_panel(paper))
    assert sum(s["method"] == "cmt" for s in specs) == 18 * 10 * 36  # 3 x 2 x 2 x 3 INN settings per split
    assert len({(s["target"], s["split"]) for s in specs}) == 18 * 10


def test_paper_job_has_the_stored_runs_protocol():
    paper = load_job("jobs/cmt_gasoline_paper.yaml").config
    assert (paper.depths, paper.coupling_hidden, paper.classifier_hidden, paper.weight_decays) == (
        [8], [10], [10, 20], [0.01, 0.1])
    assert (paper.epochs, paper.eval_every, paper.splits, paper.krr_form) == (300, 20, 10, "reference")
    specs = plan(paper, load_panel(paper))
    assert sum(s["method"] == "cmt" for s in specs) == 18 * 10 * 4


def test_unknown_target_fails_before_any_trial(tmp_path):
    config = CmtConfig.from_dict(dict(name="bad", storage_path=str(tmp_path), targets=["ATLANTIS"]))
    with pytest.raises(UserError, match="unknown target domain 'ATLANTIS'"):
        run(config)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("column, edit, phrase", [
    ("LCARPCAP", lambda v: np.where(np.arange(len(v)) == 7, 1e308, v), "column 'LCARPCAP' has values too large"),
    ("LRPMG", lambda v: np.full(len(v), 0.1), "column 'LRPMG' is constant"),
])
def test_bad_csv_values_are_one_line_before_ray_starts(tmp_path, monkeypatch, capsys, column, edit, phrase):
    """Through the CLI: one error line, exit != 0, no traceback, no run directory (the conftest guard: no Ray)."""
    import sys

    import pandas as pd

    from raygen import cli
    from raygen.cmt.datasets import default_gasoline_csv

    df = pd.read_csv(default_gasoline_csv())
    df[column] = edit(df[column].to_numpy())
    df.to_csv(tmp_path / "g.csv", index=False)
    monkeypatch.setattr(sys, "argv", ["raygen", "run", "jobs/cmt_gasoline.yaml", "--set", f"csv={tmp_path / 'g.csv'}", "--set",
                                      f"storage_path={tmp_path / 'runs'}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and phrase in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()
