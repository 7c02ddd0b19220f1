"""The device rule (`raygen.device`): Ray's assigned GPU ids decide, a GPU torch cannot see is refused.

No GPU is needed: the assigned-id lookup is faked, and a Ray started with a GPU it does not have
(num_gpus=1 on a CPU machine) assigns GPU 0 to a worker whose torch sees none, which is exactly
the refusal a CPU-only torch on a GPU node meets."""

import socket
import uuid

import pytest
import torch

from raygen import device
from raygen.errors import UserError


def fake_ids(monkeypatch, ids, cuda: bool):
    monkeypatch.setattr(device, "assigned_gpu_ids", lambda: ids)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


def test_no_assigned_gpu_is_the_cpu(monkeypatch):
    fake_ids(monkeypatch, [], cuda=True)  # a GPU node, but this process reserved none
    assert device.device_for("gpus_per_member", 0.0) == torch.device("cpu")


def test_an_assigned_gpu_is_the_first_visible_cuda_device(monkeypatch):
    fake_ids(monkeypatch, ["3"], cuda=True)  # Ray sets CUDA_VISIBLE_DEVICES=3: torch calls it cuda:0
    assert device.device_for("gpus_per_actor", 0.5) == torch.device("cuda", 0)


def test_an_assigned_gpu_torch_cannot_see_is_one_line_naming_the_key_and_node(monkeypatch):
    fake_ids(monkeypatch, ["0"], cuda=False)
    with pytest.raises(UserError) as info:
        device.device_for("gpus_per_trial", 1.0)
    message = str(info.value)
    assert "\n" not in message
    assert "config key 'gpus_per_trial'" in message and socket.gethostname() in message
    assert "set gpus_per_trial=0" in message


def test_a_reservation_ray_did_not_assign_is_refused_not_run_on_the_cpu(monkeypatch):
    fake_ids(monkeypatch, [], cuda=True)
    with pytest.raises(UserError, match="config key 'gpus_per_member' reserves 1 GPU.*Ray assigned none"):
        device.device_for("gpus_per_member", 1.0)


def test_describe_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H200 #{index}")
    assert device.describe("cpu") == "cpu"
    assert device.describe(torch.device("cuda", 0)) == "cuda:0 (NVIDIA H200 #0)"


def test_probe_without_a_gpu_starts_no_task():
    assert device.probe("gpus_per_actor", 1.0, 0.0) == "cpu"  # Ray is not even needed


NET = """
import torch


class Shrink(torch.nn.Module):
    sample_shape = (2,)

    def denoise(self, x, sigma, labels):
        return x / (1 + sigma[:, None] ** 2)


def make():
    return Shrink()
"""


@pytest.fixture
def ray_with_a_missing_gpu():
    """A fresh local Ray that believes it has one GPU (this machine has none, or torch cannot use it)."""
    import ray

    from raygen import runtime

    runtime.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    runtime._embedded = True
    yield
    runtime.shutdown()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_workers_and_trials_on_a_gpu_torch_cannot_see_fail_before_writing(tmp_path, monkeypatch, ray_with_a_missing_gpu):
    from raygen.workloads.sample import SampleConfig, run

    name = f"shrink_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    config = SampleConfig(name="gpu", storage_path=str(tmp_path / "runs"), model=f"{name}:make", covariance="diag",
                          n_samples=8, chunk_size=4, num_actors=2, gpus_per_actor=0.5)  # two workers share GPU 0
    with pytest.raises(UserError) as info:
        run(config)
    message = str(info.value)
    assert "\n" not in message
    assert "config key 'gpus_per_actor' reserves 0.5 GPU per unit and Ray assigned GPU 0" in message
    assert socket.gethostname() in message and "sees no CUDA device" in message
    assert not (tmp_path / "runs" / "gpu").exists()
    # the zoo's workers follow the same rule, refused before any member is trained
    from raygen.workloads.zoo import ZooConfig, run as run_zoo

    zoo = ZooConfig(name="zoo", storage_path=str(tmp_path / "runs"), mode="tasks", task_family="subset",
                    classes_per_task=2, zoo_tasks=1, member_steps=2, gpus_per_member=1)
    with pytest.raises(UserError, match="config key 'gpus_per_member' reserves 1 GPU per unit and Ray assigned GPU 0"):
        run_zoo(zoo)
    assert not list((tmp_path / "runs" / "zoo").glob("parts/part-*"))
    # and so do Tune trials (cmt, gradvar: probed before the run dir) and weightgen's Ray Train stages
    from raygen.workloads.cmt import CmtConfig, run as run_cmt
    from raygen.workloads.weightgen import WeightgenConfig, run as run_weightgen

    cmt = CmtConfig(name="cmt", storage_path=str(tmp_path / "runs"), data="synthetic", n_train=[4], splits=1,
                    methods=["target_only"], gpus_per_trial=1)
    with pytest.raises(UserError, match="config key 'gpus_per_trial' reserves 1 GPU per unit and Ray assigned GPU 0"):
        run_cmt(cmt)
    weightgen = WeightgenConfig(name="wg", storage_path=str(tmp_path / "runs"), mode="tasks", task_family="subset",
                                zoo_tasks=1, classes_per_task=2, train_workers=1, use_gpu=True)
    with pytest.raises(UserError, match="config key 'use_gpu' reserves 1 GPU per unit .* or set use_gpu=false$"):
        run_weightgen(weightgen)
    assert not (tmp_path / "runs" / "cmt").exists() and not (tmp_path / "runs" / "wg").exists()


def test_an_analytic_target_on_a_gpu_is_refused():
    from raygen.workloads.sample import SampleConfig, preflight

    with pytest.raises(UserError, match="config key 'gpus_per_actor': the analytic target 'mog4' computes on the CPU"):
        preflight(SampleConfig(model="mog4", gpus_per_actor=1))


def test_gpu_check_without_a_gpu_stops_with_one_line():
    """benchmarks/gpu_check.py on a machine where torch sees no GPU: one line, exit 0 (`make bench` passes)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).strip().splitlines() == [out.stdout.strip()]
    assert out.stdout.startswith("gpu_check: no CUDA GPU visible to torch")


@pytest.fixture
def local_ray_without_gpus(monkeypatch):
    """The embedded local Ray of a 2-CPU machine without GPUs, as the resource checks see it
    (`ray.nodes`, `ray.cluster_resources`), without starting Ray: a refusal must come before it matters."""
    import ray

    from raygen import runtime

    monkeypatch.setattr(runtime, "init", lambda **kwargs: None)
    monkeypatch.setattr(runtime, "_embedded", True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})


def _refused(run, config, phrase: str, run_dir) -> None:
    with pytest.raises(UserError) as info:
        run(config)
    message = str(info.value)
    assert "\n" not in message and phrase in message and "this machine has CPU 2, GPU 0" in message
    assert not run_dir.exists()  # refused before anything is written


def test_cmt_and_gradvar_trials_asking_for_a_gpu_no_node_has_are_refused_before_writing(tmp_path,
                                                                                        local_ray_without_gpus):
    from raygen.workloads.cmt import CmtConfig, run as run_cmt
    from raygen.workloads.gradvar import GradvarConfig, run as run_gradvar

    cmt = CmtConfig(name="cmt", storage_path=str(tmp_path), data="synthetic", n_train=[4], splits=1,
                    methods=["cmt"], depths=[1], coupling_hidden=[4], classifier_hidden=[4], weight_decays=[0.1],
                    epochs=2, gpus_per_trial=0.5)
    _refused(run_cmt, cmt, "cpus_per_trial/gpus_per_trial asks for CPU 1, GPU 0.5 per unit", tmp_path / "cmt")
    gradvar = GradvarConfig(name="gv", storage_path=str(tmp_path), models=["linear"], estimators=["lr"], lrs=[1e-3],
                            iterations=2, gpus_per_trial=1)
    _refused(run_gradvar, gradvar, "cpus_per_trial/gpus_per_trial asks for CPU 1, GPU 1 per unit", tmp_path / "gv")


def test_weightgen_gpus_for_training_or_generation_no_node_has_are_refused_before_writing(tmp_path,
                                                                                          local_ray_without_gpus):
    from raygen.workloads.weightgen import WeightgenConfig, run

    base = dict(storage_path=str(tmp_path), mode="tasks", task_family="subset", zoo_tasks=1, classes_per_task=2)
    _refused(run, WeightgenConfig(name="train", train_workers=1, use_gpu=True, **base),
             "use_gpu asks for CPU 1, GPU 1 per unit", tmp_path / "train")
    # the generation workers take gpus_per_member too (checked before the zoo stage starts)
    _refused(run, WeightgenConfig(name="gen", gpus_per_member=0.5, **base), "gpus_per_member asks for CPU 1, GPU 0.5",
             tmp_path / "gen")


@pytest.mark.parametrize("keys, phrase", [
    (dict(use_gpu=True), "config key 'use_gpu': GPUs are reserved by Ray Train workers: set train_workers >= 1"),
    (dict(mixed_precision="bf16", train_workers=1), "config key 'mixed_precision': bf16 is for GPU training"),
])
def test_weightgen_gpu_training_keys_are_checked_with_the_config(keys, phrase):
    from raygen.workloads.weightgen import WeightgenConfig

    with pytest.raises(UserError, match=phrase):
        WeightgenConfig(**keys)


def test_a_trainer_asked_for_a_gpu_torch_cannot_see_is_one_line_not_a_cpu_run(tmp_path, monkeypatch):
    """`raygen.train_loop.TrainRun` (every trainer: train, weightgen's AE and diffusion), in this process."""
    from raygen.train_loop import TrainRun
    from raygen.weightgen.train import StageConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = StageConfig(name="ae", storage_path=str(tmp_path), zoo="unused", use_gpu=True)
    with pytest.raises(UserError) as info:
        TrainRun(config, keep_checkpoints=1, use_gpu=config.use_gpu, mixed_precision=config.mixed_precision)
    message = str(info.value)
    assert "\n" not in message and "config key 'use_gpu' asks for a GPU per training worker" in message
    assert socket.gethostname() in message and message.endswith("or set use_gpu=false")
    assert not (tmp_path / "ae").exists()


def test_float32_full_covariance_mmdgs_is_as_good_as_float64_on_a_rank_deficient_gaussian():
    """README (Sampling, on a GPU): float32 suits every covariance, full included. Where the data do
    not vary, Sigma = sigma^2 I + sigma^4 H is a difference of nearly equal terms; float64 does not
    remove that round-off either (both dtypes repair every Sigma), and the float32 draws stay
    within 1e-3 of the float64 ones."""
    from raygen.models.energy import EnergyModel
    from raygen.sampling import initial_state
    from raygen.sampling.mmdgs import mmdgs

    d, f64 = 16, torch.float64
    g = torch.Generator().manual_seed(0)
    factor = torch.randn(d, 3, generator=g, dtype=f64)
    cov, mean = factor @ factor.T / 3, torch.randn(d, generator=g, dtype=f64)  # rank 3 in 16 dimensions

    class Energy(torch.nn.Module):
        def forward(self, x, sigma):
            noisy = (cov + sigma**2 * torch.eye(d, dtype=f64)).to(x.dtype)
            diff = x - mean.to(x.dtype)
            return 0.5 * (diff * torch.linalg.solve(noisy, diff.T).T).sum(1)

    seeds = list(range(100))
    x0 = initial_state(seeds, (d,), scale=3.0)
    drawn = {dtype: mmdgs(EnergyModel(Energy()), x0.to(dtype), [3.0, 1.0, 0.3, 0.1, 0.05], steps_per_level=3,
                          covariance="full", seeds=seeds) for dtype in (f64, torch.float32)}
    (x64, info64), (x32, info32) = drawn[f64], drawn[torch.float32]
    assert info64["psd_repairs"] == info32["psd_repairs"] == 100 * 15
    assert float((x32.double() - x64).abs().max()) < 1e-3 < float(x64.abs().max())
