"""`raygen sample` on a real local Ray: exactly-once output, resume, actor kills, determinism."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raygen.errors import UserError
from raygen.parts import Chunks, PartStore
from raygen.workloads.sample import SampleConfig, run
from tests.helpers import kill_mid_run, task_workers


def config(tmp_path, name, **overrides):
    base = dict(name=name, storage_path=str(tmp_path), model="mog4", covariance="full", levels=4,
                steps_per_level=2, n_samples=300, chunk_size=64, num_actors=2, stats_samples=300)
    return SampleConfig.from_dict({**base, **overrides})


def read_all(run_dir: Path) -> dict[int, np.ndarray]:
    table = pq.read_table(run_dir / "samples")
    ids = table["sample_id"].to_numpy()
    samples = np.stack(table["sample"].to_numpy(zero_copy_only=False))
    assert len(ids) == len(set(ids.tolist())), "an id was written twice"
    return dict(zip(ids.tolist(), samples))


def assert_same_samples(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for i in a:
        assert np.array_equal(a[i], b[i]), f"sample {i} differs"


def test_output_is_identical_for_actor_counts_and_chunk_sizes(tmp_path, ray_local):
    summary = run(config(tmp_path, "two_actors"))
    two = read_all(Path(summary["run_dir"]))
    one = read_all(Path(run(config(tmp_path, "one_actor", num_actors=1, chunk_size=100))["run_dir"]))
    assert sorted(two) == list(range(300))
    assert_same_samples(two, one)
    run_dir = Path(summary["run_dir"])
    for name in ("config.json", "metrics.jsonl", "report.json", "report.md", "preview.png"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "tb").is_dir()
    # what ran where: the report and every part say so (no GPU reserved: the CPU)
    assert json.loads((run_dir / "report.json").read_text())["device"] == "cpu"
    store = PartStore.at(str(run_dir / "samples"))
    assert {store.part_metadata(p)["device"] for p in store.part_paths()} == {"cpu"}
    # the statistics in the report are of the samples on disk, against the exact target
    assert summary["stats"]["n"] == 300
    assert 0.0 < summary["stats"]["within_mode_var"] < 0.1


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class TimedDraws:
    """A sampler whose draw takes `fixed + per_id * n` seconds on a fake clock."""

    threads = 1

    def __init__(self, clock, fixed, per_id):
        self.clock, self.fixed, self.per_id, self.sizes = clock, fixed, per_id, []

    def draw(self, ids):
        self.sizes.append(len(ids))
        self.clock.now += self.fixed + self.per_id * len(ids)


def test_auto_chunk_size_divides_the_chunk_time_by_the_marginal_time_per_sample(monkeypatch):
    import torch

    from raygen.workloads import sample

    clock = FakeClock()
    monkeypatch.setattr(sample, "time", clock)
    threads = torch.get_num_threads()
    # a fixed 20 ms per batch does not count: 0.5 s / 1 ms per sample = 500
    draws = TimedDraws(clock, fixed=0.02, per_id=0.001)
    assert sample.auto_chunk_size(draws, n_samples=100_000, workers=2) == 500
    assert draws.sizes == [1, 4, 16, 64, 256]  # stops at the first probe that takes >= 0.1 s
    assert torch.get_num_threads() == threads
    # never more than n / (4 workers), and no probe larger than that
    draws = TimedDraws(clock, fixed=0.0, per_id=1e-6)
    assert sample.auto_chunk_size(draws, n_samples=1000, workers=2) == 125
    assert max(draws.sizes) == 125
    # one sample slower than a chunk's target: one sample per chunk
    assert sample.auto_chunk_size(TimedDraws(clock, fixed=0.0, per_id=2.0), n_samples=1000, workers=2) == 1


def test_timed_chunk_size_is_recorded_and_kept_on_resume(tmp_path, ray_local, capsys):
    summary = run(config(tmp_path, "auto", chunk_size=0))
    size = summary["chunk_size"]
    assert 1 <= size <= 38  # 300 samples, 2 workers: at most ceil(300 / 8) per chunk
    assert f"chunk_size: {size} samples per chunk" in capsys.readouterr().out
    explicit = read_all(Path(run(config(tmp_path, "explicit", chunk_size=7))["run_dir"]))
    assert_same_samples(read_all(Path(summary["run_dir"])), explicit)
    again = run(config(tmp_path, "auto", chunk_size=0, num_actors=1))
    assert again["chunk_size"] == size and again["chunks_resumed"] == again["parts"]
    assert "chunk_size:" not in capsys.readouterr().out  # the first run's size, not timed again


def test_rerun_completes_missing_and_damaged_parts_only(tmp_path, ray_local, capsys):
    cfg = config(tmp_path, "resume")
    run_dir = Path(run(cfg)["run_dir"])
    reference = read_all(run_dir)
    parts = sorted((run_dir / "samples").glob("part-*.parquet"))
    removed, truncated = parts[1:3], parts[4]
    kept_mtimes = {p: p.stat().st_mtime_ns for p in parts if p not in removed and p != truncated}
    for p in removed:
        p.unlink()
    truncated.write_bytes(truncated.read_bytes()[:100])  # an interrupted copy: unreadable footer
    capsys.readouterr()
    summary = run(config(tmp_path, "resume", num_actors=1))  # the parallelism may change on a resume
    assert summary["chunks_resumed"] == len(parts) - len(removed) - 1
    assert f"re-writing 1 damaged part(s): {truncated.name}: unreadable" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in kept_mtimes.items()), "a finished part was rewritten"
    assert_same_samples(read_all(run_dir), reference)
    # the logged rate counts this run's rows only: the 3 re-drawn parts, not the resumed ones
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["rows_this_run"] == Chunks(cfg.n_samples, cfg.chunk_size).rows_in([1, 2, 4])
    assert last["step"] == cfg.n_samples


def test_rerun_with_other_settings_into_same_output_is_refused(tmp_path, ray_local):
    run(config(tmp_path, "clash", n_samples=64))
    with pytest.raises(UserError, match="other settings.*sigma_min"):
        run(config(tmp_path, "clash", n_samples=64, sigma_min=0.3))


def test_bad_model_leaves_no_samples_output(tmp_path):
    """A typo in model= fails before anything is written to samples/, so the corrected re-run is
    not refused as 'other settings' (the run dir holds no outputs)."""
    with pytest.raises(UserError, match="config key 'model'"):
        run(config(tmp_path, "typo", model=str(tmp_path / "no_such_checkpoint")))
    assert not (tmp_path / "typo").exists()


def test_killed_worker_still_gives_every_id_exactly_once(tmp_path, ray_local):
    settings = dict(n_samples=1200, levels=10, steps_per_level=3)
    reference = read_all(Path(run(config(tmp_path, "ref", chunk_size=200, num_actors=1, **settings))["run_dir"]))
    cfg = config(tmp_path, "killed", chunk_size=40, **settings)

    def parts():
        return len(list((tmp_path / "killed" / "samples").glob("part-*.parquet")))

    _, _, written_at_kill = kill_mid_run(lambda: run(cfg), parts, 2, lambda: task_workers("write_chunk"))
    assert written_at_kill < 30, "the run had already finished when the worker was killed"
    assert_same_samples(read_all(tmp_path / "killed"), reference)


def raygen(*args, cwd):
    return subprocess.run([sys.executable, "-m", "raygen.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    cases = [
        (["run", "jobs/sample_mog.yaml", "--set", "n_sample=5"], "unknown config key 'n_sample'"),
        (["run", "jobs/sample_mog.yaml", "--set", "n_samples=many"], "config key 'n_samples': expected an integer"),
        (["run", "jobs/sample_mog.yaml", "--set", "sigma_min=-1"], "config key 'sigma_min'"),
        (["run", "jobs/sample_mog.yaml", "--set", "model=/no/such/model"], "config key 'model'"),
        (["run", "jobs/nope.yaml"], "not found"),
        (["run", "jobs/sample_mog.yaml", "--address", "127.0.0.1:1", "--set", "n_samples=1"], "could not connect"),
    ]
    for args, expected in cases:
        proc = raygen(*args, "--set", f"storage_path={tmp_path}", cwd=repo) if "--address" not in args and \
            "jobs/nope.yaml" not in args else raygen(*args, cwd=repo)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and expected in lines[-1], (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "sample_mog" / "report.json").exists()


def test_cli_dry_run_prints_resolved_config(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    proc = raygen("run", "jobs/sample_mog.yaml", "--dry-run", "--set", "n_samples=7", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert '"n_samples": 7' in proc.stdout and '"workload": "sample"' in proc.stdout


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_samples_a_trained_checkpoint_class_conditionally(tmp_path, ray_local, dtype):
    from raygen.models.denoiser import build_denoiser, save_denoiser

    # trained at 12x12 (neither of the sizes the model size used to imply): sampled at 12x12
    model = build_denoiser("tiny", in_channels=1, num_classes=3, sample_shape=(1, 12, 12))
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    save_denoiser(model, model.state_dict(), checkpoint)
    summary = run(config(tmp_path, f"ckpt_{dtype}", model=str(checkpoint), covariance="diag", n_samples=6,
                         chunk_size=4, dtype=dtype, sigma_max=1.0, sigma_min=0.1, levels=2, steps_per_level=1))
    table = pq.read_table(Path(summary["run_dir"]) / "samples")
    assert sorted(table["sample_id"].to_pylist()) == list(range(6))
    # labels cycle through the classes by id, and every sample has the image's 1*12*12 values
    assert dict(zip(table["sample_id"].to_pylist(), table["label"].to_pylist())) == {i: i % 3 for i in range(6)}
    assert all(len(s) == 144 and np.isfinite(s).all() for s in table["sample"].to_pylist())
    assert summary["settings"]["shape"] == [1, 12, 12]
    assert (Path(summary["run_dir"]) / "preview.png").exists()


def test_checkpoint_without_sample_shape_is_one_clear_error(tmp_path):
    import json

    from raygen.models.denoiser import SPEC_FILE, build_denoiser, save_denoiser
    from raygen.workloads.sample import resolve_model

    model = build_denoiser("tiny", in_channels=1, num_classes=0)
    save_denoiser(model, model.state_dict(), tmp_path)
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    assert spec["sample_shape"] is None  # as in checkpoints written before the shape was recorded
    with pytest.raises(UserError, match="config key 'model'.*does not record the shape.*sample_shape"):
        resolve_model(str(tmp_path))


def test_label_must_be_a_class_of_a_conditional_model(tmp_path, ray_local):
    with pytest.raises(UserError, match="config key 'label': model 'mog4' is not class-conditional"):
        run(config(tmp_path, "lab", n_samples=8, label=3))
    assert not (tmp_path / "lab" / "samples").exists()


def test_a_request_no_node_can_meet_is_refused(tmp_path, ray_local):
    with pytest.raises(UserError, match="cpus_per_actor/gpus_per_actor asks for CPU 64"):
        run(config(tmp_path, "big", n_samples=8, cpus_per_actor=64))


def test_label_beyond_the_classes_is_refused(tmp_path):
    from raygen.workloads.sample import check_label

    check_label(config(tmp_path, "x", label=9), 10)
    with pytest.raises(UserError, match=r"config key 'label': 10 is not a class of 'mog4' \(classes 0..9\)"):
        check_label(config(tmp_path, "x", label=10), 10)


def test_config_choices_are_the_registries():
    import typing

    from raygen.sampling import SAMPLERS
    from raygen.sampling.mmdgs import COVARIANCES
    from raygen.workloads.quickstart import QuickstartConfig

    hints = typing.get_type_hints(SampleConfig)
    assert set(typing.get_args(hints["sampler"])) == set(SAMPLERS)
    assert set(typing.get_args(hints["covariance"])) == set(COVARIANCES)
    assert set(typing.get_args(typing.get_type_hints(QuickstartConfig)["covariance"])) == set(COVARIANCES)


@pytest.mark.ray
def test_a_default_run_prints_only_raygen_lines(tmp_path):
    """Fewer chunks than actors used to print Ray Data's concurrency UserWarning, and every actor
    pool the C++ core_worker line about constructor arguments (ray#53727)."""
    job = Path(__file__).resolve().parents[1] / "jobs" / "sample_mog.yaml"
    result = raygen("sample", str(job), "--set", "n_samples=50", "--set", "levels=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    noisy = [line for line in (result.stdout + result.stderr).splitlines()
             if any(w in line for w in ("Warning", "INFO", "core_worker", "WARN"))]
    assert not noisy, noisy
    assert "done: sample run 'sample_mog'" in result.stdout


def test_cli_checks_the_model_once_in_the_driver(tmp_path, ray_local, monkeypatch):
    """The CLI's preflight (before Ray starts) hands its result to run(): no second model load."""
    from raygen import cli
    from raygen.workloads import sample

    loads = []
    resolve = sample.resolve_model
    monkeypatch.setattr(sample, "resolve_model", lambda model: loads.append(model) or resolve(model))
    cli.run_job(str(Path(__file__).parents[1] / "jobs" / "sample_mog.yaml"), None,
                (f"storage_path={tmp_path}", "n_samples=200", "levels=2", "steps_per_level=1", "stats_samples=200"),
                dry_run=False, verbose=False)
    assert loads == ["mog4"]
    assert (tmp_path / "sample_mog" / "report.md").exists()


def test_too_many_parts_is_one_line_before_anything_is_written(tmp_path, ray_local):
    with pytest.raises(UserError, match=r"n_samples / chunk_size: .* parts, more than 1000000; raise the chunk"):
        run(config(tmp_path, "huge", n_samples=10**12, chunk_size=1))
    assert not (tmp_path / "huge").exists()
    # a timed chunk size is refused before the manifest records it
    with pytest.raises(UserError, match=r"timed chunk_size \d+: .* parts, more than 1000000"):
        run(config(tmp_path, "huge_timed", n_samples=10**12, chunk_size=0))
    assert not (tmp_path / "huge_timed" / "samples" / "_manifest.json").exists()


def test_a_part_that_cannot_be_written_is_one_line_and_the_rerun_resumes(tmp_path, ray_local):
    cfg = config(tmp_path, "blocked", n_samples=200, chunk_size=50)
    samples = Path(run(cfg)["run_dir"]) / "samples"
    (samples / "part-0000002.parquet").unlink()
    (samples / "part-0000002.parquet").mkdir()  # in the way of the rename, even for root
    with pytest.raises(UserError, match=r"cannot write part-0000002\.parquet to .*re-run the same command"):
        run(cfg)
    (samples / "part-0000002.parquet").rmdir()
    assert run(cfg)["chunks_resumed"] == 3

