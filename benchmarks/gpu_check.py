"""GPU check: every workload briefly on CUDA, on a machine with one GPU (under 8 minutes in all).

Writes benchmarks/results/gpu_check.json:
- per workload: the device it ran on, read from the run's own records (report.json `device`,
  recorded by `raygen.device` from what Ray assigned the workers; weightgen's per stage: zoo, AE
  and diffusion on a Ray Train worker with use_gpu in bf16, generation), its seconds and
  throughput; cmt and gradvar trials share the GPU (gpus_per_trial 0.5); a workload that has no
  GPU key yet is listed as such, not run;
- MMDGS samples/s of a small conv denoiser (float32, covariance diag) with 1 worker holding the
  GPU and 2 workers sharing it (gpus_per_actor 0.5), against the same sampler in a plain loop in
  this process; and the same 64 ids drawn on the CPU and on the GPU (the same per-sample noise,
  drawn on the CPU in both): how far apart they are (other kernels and reduction orders; TF32 in
  convolutions, PyTorch's cuDNN default on Ampere and newer) and whether they are bit-identical;
- Ray Train img/s (SADM, 1 worker, use_gpu) against the same `train_func` in this process;
- the GPU's memory high-water mark (nvidia-smi, polled every 0.2 s, all processes) and this
  process's own (torch.cuda.max_memory_allocated, the plain loops).

Without a GPU visible to torch it prints one line and exits 0 (nothing to check here; `make bench`
runs every script in this folder and must pass on a CPU machine).

    .venv/bin/python benchmarks/gpu_check.py          # on the GPU machine
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from benchlib import machine, write

# a random conv denoiser: enough arithmetic per sample for a GPU to matter, no training needed
NET = """
import torch


class ConvDenoiser(torch.nn.Module):
    sample_shape = (3, 32, 32)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(64, 3, 3, padding=1))

    def denoise(self, x, sigma, labels):
        return x / (1 + sigma[:, None, None, None] ** 2) + 0.01 * self.net(x)


def make():
    return ConvDenoiser()
"""
SAMPLE = dict(model="gpucheck_net:make", sampler="mmdgs", covariance="diag", probes=1, levels=10, steps_per_level=2,
              sigma_max=3.0, sigma_min=0.05, dtype="float32", n_samples=4096, chunk_size=512, stats_samples=64)
ZOO = dict(mode="tasks", task_family="subset", classes_per_task=3, zoo_tasks=2, seeds=4, member_steps=200,
           member_batch=64, num_actors=2)
WEIGHTGEN = dict(ZOO, zoo_tasks=2, heldout_tasks=[7], seeds=2, member_steps=100, ae_steps=100, diff_steps=100,
                 n_generate=8, sample_steps=8, latent_dim=8, ae_hidden=64, diff_hidden=64, diff_depth=1, cond_dim=8,
                 support_shots=2, finetune_steps=4, finetune_every=2, finetune_models=1, log_every=50)
TRAIN = dict(steps=120, batch_size=64, log_every=20, checkpoint_every=120, sample_every=0, model_size="small")
CMT = dict(data="synthetic", n_train=[6], splits=2, methods=["cmt", "target_only"], depths=[4], coupling_hidden=[32],
           classifier_hidden=[16], weight_decays=[0.01], epochs=40, eval_every=20, max_augment=500, n_sources=3,
           source_size=200, test_size=200)
GRADVAR = dict(models=["linear"], estimators=["lr", "optimal"], lrs=[1e-3], seeds=[0], iterations=200, eval_every=100,
               variance_batches=20, iw_samples=10, validation=100, test=100)
NO_GPU_KEY_YET = {"tune": "gpus_per_trial: owned by the tune workload's engineer (raygen.device.trial_resources)"}


class MemoryWatch:
    """The GPU's memory in use, all processes (Ray's workers too), polled with nvidia-smi."""

    def __init__(self, every_s: float = 0.2):
        self.peak_mib, self.every_s, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak_mib = max([self.peak_mib, *(int(v) for v in out.split() if v.isdigit())])
            except (OSError, subprocess.SubprocessError):
                return
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def report_of(result) -> dict:
    return json.loads(Path(result.run_dir, "report.json").read_text())


def timed_run(workload: str, **overrides) -> tuple[dict, float]:
    import raygen

    start = time.perf_counter()
    result = raygen.run(workload, **overrides)
    return report_of(result), time.perf_counter() - start


def plain_sampler(chunk: int, device: torch.device):
    """The sampling workers' ChunkSampler in this process, on `device` (this process reserved no GPU
    from Ray: it is built on the CPU and moved, as a worker's would be)."""
    from raygen.workloads.sample import ChunkSampler, SampleConfig

    sampler = ChunkSampler(SampleConfig.from_dict(dict(SAMPLE, name="plain")).to_dict(), chunk,
                           import_dirs=(os.getcwd(),))
    sampler.device = device
    sampler.model = sampler.model.to(device)
    return sampler


def plain_mmdgs(n: int, chunk: int) -> float:
    """Samples/s of the same sampler and net in this process on the GPU, chunk by chunk."""
    import numpy as np

    sampler = plain_sampler(chunk, torch.device("cuda", 0))
    sampler.draw(np.arange(8))  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    for c in range(n // chunk):
        sampler.draw(sampler.layout.ids(c))
    torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def cpu_vs_gpu(ids: int = 64) -> dict:
    """The same ids drawn on the CPU and on the GPU: each sample's noise comes from its own seed on the
    CPU in both, so what differs is the arithmetic (kernels, reduction order, TF32 convolutions)."""
    import numpy as np

    drawn = {}
    for name in ("cpu", "cuda"):
        x, *_ = plain_sampler(ids, torch.device(name)).draw(np.arange(ids))
        drawn[name] = x.detach().cpu().double()
    diff = (drawn["cuda"] - drawn["cpu"]).abs()
    return {"ids": ids, "dtype": SAMPLE["dtype"], "bit_identical": bool(torch.equal(drawn["cuda"], drawn["cpu"])),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "sample_abs_max": float(drawn["cpu"].abs().max()),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def steady_images_per_s(run_dir: str) -> float:
    _, *rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["images_per_s"] for r in rows if "images_per_s" in r)


def digits_folder(root: Path, n: int = 400) -> str:
    """An image folder of real digits, the study's "generated" set (the check times the GPU, not quality)."""
    import numpy as np
    from PIL import Image

    from raygen.data import digits_arrays

    images, labels = digits_arrays()
    for i in range(n):
        folder = root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((images[i, 0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return str(root)


def main() -> int:
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} here; nothing checked (run it on a GPU "
              "machine, with CUDA torch: make TORCH_SPEC=...)")
        return 0
    from raygen import runtime

    runtime.init()
    gpu = torch.cuda.get_device_name(0)
    result: dict = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "machine": machine(),
                    "workloads": {}, "mmdgs": {}, "train": {}}
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    (work / "gpucheck_net.py").write_text(NET)
    os.chdir(work)  # the sampling workers import the net from the driver's working directory
    storage = str(work / "runs")
    started = time.perf_counter()

    def attempt(section: dict, key: str, fn) -> None:
        print(f"gpu_check: {key} ...", flush=True)
        try:
            section[key] = fn()
        except Exception as exc:  # noqa: BLE001 - one failed check must not lose the others' figures
            section[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            traceback.print_exc()

    def sampled(name: str, workers: int, gpus: float) -> dict:
        report, seconds = timed_run("sample", name=name, storage_path=storage, num_actors=workers,
                                    gpus_per_actor=gpus, **SAMPLE)
        return {"device": report["device"], "workers": workers, "gpus_per_actor": gpus, "seconds": seconds,
                "samples_per_s": report["samples_per_s"]}

    def zoo() -> dict:
        report, seconds = timed_run("zoo", name="zoo", storage_path=storage, gpus_per_member=0.5, **ZOO)
        return {"device": report["device"], "seconds": seconds, "members_per_s": report["members"] / seconds}

    def weightgen() -> dict:
        # zoo and generation workers share the GPU; the AE and diffusion on one Ray Train worker, bf16 (auto)
        report, seconds = timed_run("weightgen", name="wg", storage_path=storage, gpus_per_member=0.5, use_gpu=True,
                                    train_workers=1, **WEIGHTGEN)
        generated = report["generated"]
        return {"device": report["device"], "seconds": seconds,
                "generated_per_s": generated["written"] / generated["seconds"] if generated["seconds"] else None}

    def cmt() -> dict:
        report, seconds = timed_run("cmt", name="cmt", storage_path=storage, gpus_per_trial=0.5, **CMT)
        return {"device": report["device"], "seconds": seconds, "trials_per_s": report["trials"] / seconds}

    def gradvar() -> dict:
        report, seconds = timed_run("gradvar", name="gradvar", storage_path=storage, gpus_per_trial=0.5, **GRADVAR)
        return {"device": report["device"], "seconds": seconds, "trials_per_s": report["trials"] / seconds}

    def study() -> dict:
        report, seconds = timed_run("study", name="study", storage_path=storage, gpus_per_trial=0.5,
                                    generated=digits_folder(work / "generated"), ratios=[0.0, 0.5], seeds=[0],
                                    epochs=3, feature_steps=50, diversity_images=200)
        return {"device": report["device"], "seconds": seconds, "trials_per_s": report["trials"] / seconds}

    def train() -> dict:
        from raygen.api import make_config
        from raygen.diffusion.train import train_func

        report, seconds = timed_run("train", name="train_ray", storage_path=storage, use_gpu=True, num_workers=1,
                                    **TRAIN)
        ray_ips = steady_images_per_s(str(Path(storage, "train_ray")))
        # the same job in this process: the plain PyTorch loop on the same GPU
        train_func(make_config("train", name="train_plain", storage_path=storage, use_gpu=True, **TRAIN).to_dict())
        plain_ips = steady_images_per_s(str(Path(storage, "train_plain")))
        return {"device": report["device"], "ray_train_1_worker_images_per_s": ray_ips,
                "plain_loop_images_per_s": plain_ips, "ray_vs_plain": ray_ips / plain_ips, "ray_seconds": seconds}

    with MemoryWatch() as memory:
        attempt(result["mmdgs"], "ray_1_worker", lambda: sampled("mmdgs1", 1, 1.0))
        attempt(result["mmdgs"], "ray_2_workers_sharing", lambda: sampled("mmdgs2", 2, 0.5))
        attempt(result["mmdgs"], "plain_loop", lambda: {"samples_per_s": plain_mmdgs(SAMPLE["n_samples"],
                                                                                     SAMPLE["chunk_size"])})
        attempt(result["mmdgs"], "cpu_vs_gpu", cpu_vs_gpu)
        result["workloads"]["sample"] = result["mmdgs"]["ray_1_worker"]
        attempt(result["workloads"], "zoo", zoo)
        attempt(result["workloads"], "weightgen", weightgen)
        attempt(result["workloads"], "study", study)
        attempt(result["workloads"], "cmt", cmt)
        attempt(result["workloads"], "gradvar", gradvar)
        attempt(result, "train", train)
        result["workloads"]["train"] = result["train"]
        for name, why in NO_GPU_KEY_YET.items():
            result["workloads"][name] = {"device": "not run", "why": why}
    result["gpu_memory_peak_mib_all_processes"] = memory.peak_mib
    result["gpu_memory_peak_mib_this_process"] = torch.cuda.max_memory_allocated() / 2**20
    result["seconds"] = time.perf_counter() - started
    path = write("gpu_check", result)
    on_gpu = {k: v.get("device", "?") for k, v in result["workloads"].items()}
    print(f"gpu_check: {gpu}, {result['seconds']:.0f} s; devices {on_gpu}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
