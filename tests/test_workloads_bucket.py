"""Every workload's run directory in a bucket (a real S3 API: moto server on 127.0.0.1); the main job's is
in tests/test_quickstart_cluster.py (on two simulated nodes).

The objects are read back through pyarrow; nothing may appear locally under a directory named
after the scheme.
"""


from raygen import storage
from raygen.jobs import load_job
from tests.helpers import bucket_objects as _objects


def test_tune_in_a_bucket(bucket, tmp_path, monkeypatch, ray_local):
    from raygen.workloads import tune

    monkeypatch.chdir(tmp_path)
    job = load_job(_jobs("tune_hypergrad.yaml"), [f"storage_path={bucket}", "name=t", "num_samples=1",
                                                  "solvers=[nystrom]", "max_outer_steps=2", "grace_period=1",
                                                  "baselines=[random]", "baseline_samples=1"])
    tune.run(job.config)
    run = storage.join(bucket, "t")
    objects = _objects(run)
    assert "report.json" in objects and "trials.json" in objects
    assert any(o.endswith("result.json") for o in objects), "Tune's experiment lives in the bucket"
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())


def _jobs(name: str) -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / "jobs" / name)


def test_research_workloads_in_a_bucket(bucket, tmp_path, monkeypatch, ray_local):
    """cmt, gradvar and weightgen with tiny budgets: their reports, plots and parts are objects."""
    from raygen.workloads.cmt import CmtConfig
    from raygen.workloads.cmt import run as run_cmt
    from raygen.workloads.gradvar import GradvarConfig
    from raygen.workloads.gradvar import run as run_gradvar
    from raygen.workloads.weightgen import WeightgenConfig
    from raygen.workloads.weightgen import run as run_weightgen

    monkeypatch.chdir(tmp_path)
    run_cmt(CmtConfig.from_dict(dict(
        name="cmt", storage_path=bucket, data="synthetic", n_train=[4], splits=1, methods=["oracle", "target_only"],
        depths=[2], coupling_hidden=[8], classifier_hidden=[8], weight_decays=[0.01], epochs=2, eval_every=2,
        max_augment=100, n_sources=3, source_size=40, test_size=50)))
    assert {"report.json", "relative_mse.png"} <= set(_objects(storage.join(bucket, "cmt")))
    run_gradvar(GradvarConfig.from_dict(dict(
        name="gv", storage_path=bucket, models=["linear"], estimators=["lr"], lrs=[0.003], seeds=[0], units=4,
        batch_size=10, iterations=10, eval_every=5, variance_batches=3, iw_samples=2, baseline_hidden=4,
        validation=20, test=20)))
    assert {"report.json", "grad_variance.png"} <= set(_objects(storage.join(bucket, "gv")))
    run_weightgen(WeightgenConfig.from_dict(dict(
        name="wg", storage_path=bucket, mode="tasks", task_family="subset", zoo_tasks=2, heldout_tasks=[7],
        classes_per_task=3, seeds=2, member_steps=20, ae_steps=10, diff_steps=10, n_generate=2, sample_steps=2,
        latent_dim=8, ae_hidden=16, diff_hidden=16, diff_depth=1, cond_dim=8, support_shots=2, finetune_steps=2,
        finetune_every=1, finetune_models=1, log_every=5, jobs_per_part=2)))
    objects = _objects(storage.join(bucket, "wg"))
    assert "report.json" in objects and any(o.startswith("zoo/parts/part-") for o in objects)
    assert {"zoo/report.json", "zoo/accuracy_hist.png"} <= set(objects)  # the zoo stage's own run
    assert any(o.startswith("generated/part-") for o in objects)
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())
