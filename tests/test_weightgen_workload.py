"""`raygen weightgen` end to end on Ray (tiny budgets), and its bad-input lines."""

import json
import re

import numpy as np
import pytest
import torch

from raygen.errors import UserError
from raygen.parts import Chunks, PartStore
from raygen.models.params import ParamLayout, unflatten
from raygen.weightgen.zoo import build_classifier, task_splits, zoo_splits
from raygen.workloads import weightgen, zoo
from raygen.workloads.weightgen import WeightgenConfig
from raygen.weightgen.store import read_zoo
from tests.helpers import ZOO_ARCH, write_zoo_part

TINY = dict(mode="tasks", task_family="subset", zoo_tasks=2, heldout_tasks=[7], classes_per_task=3, seeds=2,
            member_steps=40, ae_steps=30, diff_steps=30, n_generate=4, sample_steps=4, latent_dim=8, ae_hidden=32,
            diff_hidden=32, diff_depth=1, cond_dim=8, support_shots=2, finetune_steps=4, finetune_every=2,
            finetune_models=1, log_every=10, jobs_per_part=2)


def test_tiny_tasks_run_end_to_end(ray_local, tmp_path, capsys):
    # support sets re-drawn per training step and per generated vector: the re-drawn part below
    # must still come back byte-identical
    cfg = WeightgenConfig.from_dict({**TINY, "name": "tiny", "storage_path": str(tmp_path), "support_draw": "random"})
    summary = weightgen.run(cfg)
    shown = capsys.readouterr().out
    assert re.search(r"^step \d+/\d+  ae loss \S+  \d+ models/s$", shown, re.M) and "img/s" not in shown
    report = json.loads((tmp_path / "tiny" / "report.json").read_text())
    assert report["device"] == {"zoo": "cpu", "ae": "cpu", "diffusion": "cpu", "generation": "cpu"}  # no GPU keys
    for a, b in (("zoo", "original"), ("zoo", "generated")):
        for k in ("acc_mean", "acc_max"):
            assert 0 <= report[a][b][k] <= 100
    held = report["heldout"]
    assert held["chance"] == pytest.approx(100 / 3)
    assert 0 <= held["generated"]["zero_shot_mean"] <= 100
    for value in (held["retrieval"]["zero_shot_mean"], held["generated"]["top1_zero_shot_mean"],
                  held["generated"]["top3_zero_shot_mean"]):
        assert 0 <= value <= 100
    assert set(held["shared_pairs"]) == {"7"} and 0 <= held["shared_pairs"]["7"] <= 3
    assert set(held["steps_to_90"]) == {"generated", "random", "other_task"}
    assert (tmp_path / "tiny" / "accuracy_hist.png").exists() and (tmp_path / "tiny" / "finetune.png").exists()
    # the autoencoder's diagnostics: tasks zoos are z-scored per tensor unless the job says otherwise
    assert report["ae"]["normalize"] == "tensor" and report["ae"]["latent_noise"] == 0.1
    assert 0 <= report["ae"]["recon_acc_std"] and "## Autoencoder (tensor normalisation)" in (
        tmp_path / "tiny" / "report.md").read_text()
    # every member / generated model exactly once
    PartStore.at(summary["zoo"]["uri"], "model_id").verify(Chunks(4, 2), check="ids")
    PartStore.at(summary["generated"]["uri"], "model_id").verify(Chunks(12, 4), check="ids")
    # a generated model's stored accuracy is its accuracy on *its own task's* test set
    gen, cols, meta = read_zoo(summary["generated"]["uri"])
    assert meta["device"] == "cpu"  # the generation workers' own device
    i = int(np.flatnonzero(cols["task_id"] == 7)[0])
    net = build_classifier(meta["arch"]).eval()
    net.load_state_dict(unflatten(gen[i], ParamLayout.from_dict(meta["layout"])))
    x, y = task_splits(meta["tasks"]["7"], zoo_splits(meta))["test"]
    with torch.no_grad():
        assert cols["test_acc"][i] == pytest.approx(float((net(x).argmax(-1) == y).double().mean()), abs=1e-12)
    # members do not depend on the worker: the 2 Ray actors' parts == each job trained in this process
    members, _, _ = read_zoo(summary["zoo"]["uri"])
    here = zoo.ZooWorker(zoo.stage_config(cfg, str(tmp_path / "tiny")).to_dict(), read_zoo(summary["zoo"]["uri"])[2])
    assert torch.equal(members, torch.cat([here._job(j)[0] for j in range(cfg.jobs)]))
    # a re-run reuses every stage: nothing is trained or drawn again (the zoo's parts are not rewritten)
    parts = sorted((tmp_path / "tiny" / "zoo" / "parts").glob("part-*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    stage_loss = {s: json.loads((tmp_path / "tiny" / s / "report.json").read_text())["final"]["loss"]
                  for s in ("ae", "diffusion")}
    again = weightgen.run(cfg)
    assert again["zoo"]["written"] == 0 and again["generated"]["written"] == 0
    assert again["device"]["generation"] == "cpu"  # what the reused parts were drawn on
    assert [p.stat().st_mtime_ns for p in parts] == mtimes
    for s, loss in stage_loss.items():  # a reused stage keeps its report's final metrics
        assert json.loads((tmp_path / "tiny" / s / "report.json").read_text())["final"]["loss"] == loss
    assert again["table"] == summary["table"]
    # a lost generated part is drawn again, the same; the logged rate counts only its 4 models
    gen_parts = sorted((tmp_path / "tiny" / "generated").glob("part-*.parquet"))
    kept = gen_parts[1].read_bytes()
    gen_parts[1].unlink()
    third = weightgen.run(cfg)
    assert third["generated"]["written"] == 4 and gen_parts[1].read_bytes() == kept
    last = json.loads((tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["rows_this_run"], last["step"]) == (4, 12)


def test_bad_zoos_are_one_line_errors(ray_local, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="is empty"):
        read_zoo(str(empty))
    mixed = PartStore.at(str(tmp_path / "mixed"), "model_id")
    chunks = Chunks(4, 2)
    write_zoo_part(mixed, 0, chunks, ZOO_ARCH)
    write_zoo_part(mixed, 1, chunks, {**ZOO_ARCH, "width": 8})
    with pytest.raises(UserError, match="mixes architectures"):
        read_zoo(mixed.uri)
    other = PartStore.at(str(tmp_path / "wide"), "model_id")
    write_zoo_part(other, 0, Chunks(2, 2), {**ZOO_ARCH, "width": 8})
    cfg = WeightgenConfig.from_dict({"name": "x", "storage_path": str(tmp_path / "runs"), "zoo": other.uri,
                                     "param_subset": "all"})
    with pytest.raises(UserError, match="parameter layout does not match the target architecture"):
        weightgen.run(cfg)


def test_heldout_task_in_zoo_is_refused(tmp_path):
    with pytest.raises(UserError, match="heldout_tasks.*also in the zoo"):
        WeightgenConfig.from_dict({**TINY, "heldout_tasks": [1]})
    # a different id that defines the same task is refused too (every digits task is the same task),
    # before Ray starts or anything is written
    cfg = WeightgenConfig.from_dict({**TINY, "task_family": "digits", "zoo_tasks": 1, "heldout_tasks": [5],
                                     "storage_path": str(tmp_path)})
    with pytest.raises(UserError, match="held-out task 5 defines the same task as zoo task 0"):
        weightgen.run(cfg)
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="trajectory mode collects one task"):
        WeightgenConfig.from_dict({"zoo_tasks": 3})
