"""The Python API (`raygen.run`, `raygen.read_*`): the CLI's report for the same config, its refusal
and resume rules, exceptions instead of exits, outputs read without knowing the layout."""

import json

import numpy as np
import pytest

import raygen
from raygen.cli import cli
from raygen.errors import UserError
from raygen.parts import Chunks, PartStore
from raygen.workloads.sample import SampleConfig
from tests.helpers import ZOO_ARCH, write_zoo_part

SETTINGS = dict(model="mog4", n_samples=120, chunk_size=40, levels=3, steps_per_level=2, num_actors=2,
                stats_samples=120, name="same")
TIMINGS = {"seconds", "samples_per_s", "seconds_to_first_part", "actor_busy_seconds"}


def report_without_timings(run_dir, storage_path):
    text = (run_dir / "report.json").read_text().replace(str(storage_path), "<storage>")
    return {k: v for k, v in json.loads(text).items() if k not in TIMINGS}


def test_api_gives_the_cli_report_for_the_same_config(tmp_path, ray_local, capsys):
    overrides = [f"{k}={v}" for k, v in {**SETTINGS, "storage_path": tmp_path / "cli"}.items()]
    cli.main(["sample", *[a for o in overrides for a in ("--set", o)]], standalone_mode=False)
    assert "done: sample run 'same'" in capsys.readouterr().out

    result = raygen.run("sample", storage_path=str(tmp_path / "api"), **SETTINGS)
    assert "done:" not in capsys.readouterr().out  # the CLI's lines stay in the CLI
    assert result.run_dir == str(tmp_path / "api" / "same") and result.workload == "sample"
    # the default job (jobs/sample_mog.yaml) under the overrides, as `raygen sample --set ...` reads it
    assert result.config == raygen.make_config("sample", job="jobs/sample_mog.yaml", storage_path=str(tmp_path / "api"),
                                               **SETTINGS)
    from_cli = report_without_timings(tmp_path / "cli" / "same", tmp_path / "cli")
    assert result.report == json.loads((tmp_path / "api" / "same" / "report.json").read_text())
    assert report_without_timings(tmp_path / "api" / "same", tmp_path / "api") == from_cli
    assert from_cli["stats"]["n"] == 120  # the compared report holds the samples' statistics

    table = raygen.read_samples(result)
    assert table.equals(raygen.read_samples(tmp_path / "cli" / "same"))
    assert table["sample_id"].to_pylist() == list(range(120))
    assert raygen.sample_metadata(result)["shape"] == [2]
    assert raygen.read_samples(result, dataset=True).count() == 120


def test_api_resumes_refuses_and_raises_like_the_cli(tmp_path, ray_local):
    config = SampleConfig.from_dict({**SETTINGS, "storage_path": str(tmp_path), "n_samples": 80})
    first = raygen.run("sample", config)
    again = raygen.run("sample", config, num_actors=1)  # parallelism may change on a resume
    assert again.summary["chunks_resumed"] == again.summary["parts"] == 2
    assert raygen.read_samples(again).equals(raygen.read_samples(first))
    with pytest.raises(UserError, match="holds results made with other settings"):
        raygen.run("sample", config, seed=1)
    fresh = raygen.run("sample", config, seed=1, fresh=True)
    assert fresh.summary["chunks_resumed"] == 0


def test_api_bad_input_is_a_user_error_before_ray_work(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'n_sample'"):
        raygen.run("sample", storage_path=str(tmp_path), n_sample=10)
    with pytest.raises(UserError, match="workload .train. takes a TrainSADMConfig"):
        raygen.make_config("train", SampleConfig())
    with pytest.raises(UserError, match="unknown workload 'sampel'"):
        raygen.run("sampel")
    with pytest.raises(UserError, match="neither an analytic target"):  # the workload's preflight, before Ray
        raygen.run("sample", storage_path=str(tmp_path), model="no_such_target")
    with pytest.raises(UserError, match="no samples at"):
        raygen.read_samples(tmp_path)


def test_zoo_and_generated_weights_are_read_from_the_run_directory(tmp_path):
    from raygen.weightgen.store import read_zoo

    chunks = Chunks(6, 3)
    for where in ("zoo_run/parts", "weightgen_run/zoo/parts", "weightgen_run/generated"):
        store = PartStore.at(str(tmp_path / where), id_column="model_id")
        for chunk in range(chunks.count):
            write_zoo_part(store, chunk, chunks, ZOO_ARCH)
    expected, cols, meta = read_zoo(str(tmp_path / "zoo_run/parts"))
    for got in (raygen.read_zoo(tmp_path / "zoo_run"), raygen.read_zoo(tmp_path / "weightgen_run"),
                raygen.read_weights(tmp_path / "weightgen_run")):
        params, got_cols, got_meta = got
        assert np.array_equal(params.numpy(), expected.numpy()) and got_meta == meta
        assert got_cols["model_id"].tolist() == cols["model_id"].tolist() == list(range(6))
    with pytest.raises(UserError, match="generated set .* is empty"):
        raygen.read_weights(tmp_path / "zoo_run")
