"""The run directory decides before it writes, never relabels results, and lives in a bucket too."""

import dataclasses
import json
import os

import pytest

from raygen import storage
from raygen.config import Config, bounded
from raygen.errors import UserError
from raygen.rundir import RunDir


@dataclasses.dataclass
class ToyConfig(Config):
    RESUME_FREE = frozenset({"workers"})
    steps: int = bounded(10, ge=1)
    lr: float = bounded(0.1, gt=0)
    workers: int = 1


def _finish(run_dir: RunDir, value: float) -> None:
    run_dir.write_text("outputs/result.txt", str(value))
    run_dir.log(1, loss=value)
    run_dir.write_report({"value": value}, f"value {value}")
    run_dir.close()


def test_bounds_are_declared_once_and_name_the_key():
    with pytest.raises(UserError, match="config key 'steps': must be >= 1, got 0"):
        ToyConfig(steps=0)
    with pytest.raises(UserError, match="config key 'lr': must be > 0"):
        ToyConfig.from_dict({"lr": -1})


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "a\\b", "../escape"])
def test_name_stays_inside_storage_path(tmp_path, name):
    with pytest.raises(UserError, match="config key 'name'"):
        ToyConfig(name=name, storage_path=str(tmp_path))


def test_refused_rerun_leaves_the_finished_run_untouched(tmp_path):
    config = ToyConfig(name="r", storage_path=str(tmp_path))
    _finish(RunDir(config), 1.0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"other settings \(lr: 0\.1 -> 0\.2\).*--fresh"):
        RunDir(ToyConfig(name="r", storage_path=str(tmp_path), lr=0.2))
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert after == before and "report.md" in after


def test_resume_with_same_results_settings_is_allowed(tmp_path):
    _finish(RunDir(ToyConfig(name="r", storage_path=str(tmp_path))), 1.0)
    run_dir = RunDir(ToyConfig(name="r", storage_path=str(tmp_path), workers=4))  # parallelism is free
    assert json.loads(run_dir.read_text("config.json"))["workers"] == 4
    assert not run_dir.exists("report.md")  # the re-run's report comes at its end


def test_failed_start_does_not_poison_the_name(tmp_path):
    run_dir = RunDir(ToyConfig(name="r", storage_path=str(tmp_path), steps=5))
    run_dir.log(0, loss=9.0)  # it failed after logging, before any output
    run_dir.close()
    run_dir = RunDir(ToyConfig(name="r", storage_path=str(tmp_path), steps=7))
    assert json.loads(run_dir.read_text("config.json"))["steps"] == 7
    assert not run_dir.exists("metrics.jsonl")  # the failed start's metrics do not pass for this run's


def test_fresh_clears_the_run(tmp_path):
    _finish(RunDir(ToyConfig(name="r", storage_path=str(tmp_path))), 1.0)
    RunDir.clear(ToyConfig(name="r", storage_path=str(tmp_path), lr=0.5))
    run_dir = RunDir(ToyConfig(name="r", storage_path=str(tmp_path), lr=0.5))
    assert run_dir.listdir() == ["config.json"]


def test_truncate_log_drops_lines_after_the_resume_step(tmp_path):
    run_dir = RunDir(ToyConfig(name="r", storage_path=str(tmp_path)))
    for step in (1, 2, 3, 4):
        run_dir.log(step, loss=float(step))
    run_dir.close()
    run_dir = RunDir(ToyConfig(name="r", storage_path=str(tmp_path)))
    run_dir.truncate_log(2)
    run_dir.log(3, loss=30.0)
    run_dir.close()
    lines = [json.loads(line) for line in run_dir.read_text("metrics.jsonl").splitlines()]
    assert [(m["step"], m["loss"]) for m in lines] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_run_dir_in_a_bucket(bucket, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    config = ToyConfig(name="r", storage_path=bucket)
    run_dir = RunDir(config)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    run_dir.save_figure("plot.png", fig)
    run_dir.log(1, loss=0.5)
    run_dir.tensorboard  # noqa: B018 - staged locally, uploaded by flush
    _finish(run_dir, 2.0)
    loc = storage.resolve(config.run_dir)
    names = storage.listdir(loc)
    assert {"config.json", "metrics.jsonl", "report.json", "report.md", "plot.png", "tb", "outputs"} <= set(names)
    assert storage.listdir(loc.child("tb")), "TensorBoard events were uploaded"
    assert json.loads(storage.read_bytes(loc.child("report.json"))) == {"value": 2.0}
    assert storage.read_bytes(loc.child("plot.png"))[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="other settings"):
        RunDir(ToyConfig(name="r", storage_path=bucket, steps=3))
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())


def test_unwritable_storage_path_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot write the run directory .*afile/r"):
        RunDir(ToyConfig(name="r", storage_path=str(tmp_path / "afile")))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root can write anywhere: nothing to check then
        with pytest.raises(UserError, match="cannot write the run directory"):
            RunDir(ToyConfig(name="r", storage_path=str(locked)))


def test_a_key_added_later_counts_as_its_default(tmp_path):
    _finish(RunDir(ToyConfig(name="r", storage_path=str(tmp_path))), 1.0)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    del saved["lr"]  # a run made before `lr` existed
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    RunDir(ToyConfig(name="r", storage_path=str(tmp_path)))  # lr at its default: resumes
    with pytest.raises(UserError, match="lr"):
        (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
        RunDir(ToyConfig(name="r", storage_path=str(tmp_path), lr=0.3))
