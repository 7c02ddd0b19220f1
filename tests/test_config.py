"""Config parsing: numbers and names the way people write them, clear lines for the rest."""

import pytest

from raygen.errors import UserError
from raygen.jobs import load_job


def _job(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_floats_without_a_dot_and_numeric_names(tmp_path):
    job = load_job(_job(tmp_path, "workload: sample\nname: 2024\nstep_size: 1e-4\n"), ["sigma_min=2e-1"])
    assert job.config.name == "2024" and job.config.step_size == 1e-4 and job.config.sigma_min == 0.2


def test_nan_is_not_a_number(tmp_path):
    with pytest.raises(UserError, match="config key 'step_size': expected a number"):
        load_job(_job(tmp_path, "workload: sample\n"), ["step_size=nan"])


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(UserError, match="key 'n_samples' is given twice \\(line 3\\)"):
        load_job(_job(tmp_path, "workload: sample\nn_samples: 10\nn_samples: 20\n"))


def test_workload_must_be_one_name(tmp_path):
    with pytest.raises(UserError, match="'workload:' must be one workload name"):
        load_job(_job(tmp_path, "workload: [sample, train]\n"))


def test_a_request_no_node_can_meet_is_refused_on_local_ray(ray_local):
    from raygen import runtime

    runtime.check_fits({"CPU": 1}, "cpus_per_trial")
    with pytest.raises(UserError, match="cpus_per_actor asks for CPU 64 per unit but this machine has CPU 2"):
        runtime.check_fits({"CPU": 64}, "cpus_per_actor")
    with pytest.raises(UserError, match="use_gpu asks for CPU 1, GPU 1 per unit but this machine has CPU 2, GPU 0"):
        runtime.check_fits({"CPU": 1, "GPU": 1}, "use_gpu")


def test_yaml_merge_keys_work_and_written_keys_override_merged_ones(tmp_path):
    text = "workload: sample\n<<: {n_samples: 10, seed: 3}\nseed: 4\n"
    job = load_job(_job(tmp_path, text))
    assert job.config.n_samples == 10 and job.config.seed == 4
    with pytest.raises(UserError, match="'seed' is given twice"):
        load_job(_job(tmp_path, text + "seed: 5\n"))


def test_an_alias_bomb_is_refused_without_being_expanded(tmp_path):
    levels = ", ".join(f"&l{i} [" + ",".join([f"*l{i - 1}" if i else "x"] * 9) + "]" for i in range(10))
    with pytest.raises(UserError, match="config key 'name': the value holds more than"):
        load_job(_job(tmp_path, f"workload: sample\nname: [{levels}]\n"))


def test_every_verb_finds_its_default_job_outside_the_repository(tmp_path, monkeypatch, capsys):
    """A user who installed raygen has no jobs/: the defaults ship in the package (raygen/jobs_default,
    links to jobs/ that a wheel turns into copies)."""
    import json
    import sys
    from pathlib import Path

    from raygen import cli
    from raygen.jobs import PACKAGED_JOBS
    from raygen.workloads import WORKLOADS

    repo_jobs = Path(__file__).resolve().parents[1] / "jobs"
    # every job file of the repository ships (a new one without its link would be missing outside)
    assert sorted(p.name for p in PACKAGED_JOBS.glob("*.yaml")) == sorted(p.name for p in repo_jobs.glob("*.yaml"))
    monkeypatch.chdir(tmp_path)
    for verb, workload in WORKLOADS.items():
        rel = Path(workload.default_job)
        assert (PACKAGED_JOBS / rel.name).read_text() == (repo_jobs / rel.name).read_text(), rel
        assert load_job(rel).workload == verb
        monkeypatch.setattr(sys, "argv", ["raygen", verb if verb != "quickstart" else "run",
                                          *([str(rel)] if verb == "quickstart" else []), "--dry-run"])
        cli.main()
        assert json.loads(capsys.readouterr().out)["workload"] == verb
    assert not list(tmp_path.iterdir())
