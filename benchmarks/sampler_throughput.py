"""Throughput of `raygen sample` on Ray Data actors vs the same work in a plain loop (issue 2).

Three figures, measured side by side in one process:
  1. Ray overhead: samples/s of `raygen sample` with 1 actor vs a plain loop that calls the same
     SamplerActor code (sampling + Parquet writes) in this process, one torch thread each.
     Reported end to end (including starting the actor pool: each actor imports torch and builds
     the model) and in steady state (from the first written part to the last).
  2. Scaling: samples/s with 2 actors vs 1 actor (ideal 2.0 on 2 cores), steady state.
  3. Driver memory: peak RSS growth of this driver process during a run of N = 10k vs 100k
     samples (a cheap sampler setting: only the streaming matters here).
The Ray timings include starting the actor pool; a warm-up run first starts Ray's workers.

    .venv/bin/python benchmarks/sampler_throughput.py [--quick]

writes benchmarks/results/sampler_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from raygen import runtime
from raygen.parts import PartStore
from raygen.workloads.sample import SampleConfig, SamplerActor, prepare_output, run

RESULTS = Path(__file__).parent / "results"


def plain_loop(config: SampleConfig, out_dir: str) -> float:
    torch.set_num_threads(1)
    store = PartStore.at(out_dir)
    chunk_size = prepare_output(config, store)
    actor = SamplerActor(config.to_dict(), store.loc.uri, chunk_size)
    import numpy as np

    start = time.perf_counter()
    for chunk in range(math.ceil(config.n_samples / chunk_size)):
        actor({"chunk": np.asarray([chunk])})
    return time.perf_counter() - start


class PeakRSS:
    """Peak resident memory of this process above its level at start, sampled every 10 ms."""

    def __init__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N for a smoke run")
    args = parser.parse_args()
    n = 4000 if args.quick else 40000
    memory_ns = (2000, 20000) if args.quick else (10000, 100000)
    runtime.init(num_cpus=2)
    tmp = Path(tempfile.mkdtemp(prefix="raygen-bench-"))
    work = dict(storage_path=str(tmp), model="mog4", covariance="full", levels=10, steps_per_level=3,
                n_samples=n, chunk_size=1000)

    run(SampleConfig.from_dict({**work, "name": "warmup", "n_samples": 500, "num_actors": 2}))
    plain_s = plain_loop(SampleConfig.from_dict({**work, "name": "plain"}), str(tmp / "plain" / "samples"))
    chunk_ms = 1000 * plain_s / math.ceil(n / work["chunk_size"])
    ray_s, steady = {}, {}
    for k in (1, 2):
        summary = run(SampleConfig.from_dict({**work, "name": f"actors{k}", "num_actors": k}))
        ray_s[k] = summary["seconds"]
        # the first k parts arrive together once the pool is up; count the rest against the time after
        first_rows = k * work["chunk_size"]
        steady[k] = (n - first_rows) / (summary["seconds"] - summary["seconds_to_first_part"])

    cheap = dict(storage_path=str(tmp), model="mog4", covariance="iso", levels=1, steps_per_level=1,
                 chunk_size=1000, num_actors=2, stats_samples=1000)
    memory = {}
    for size in memory_ns:
        with PeakRSS() as peak:
            run(SampleConfig.from_dict({**cheap, "name": f"mem{size}", "n_samples": size}))
        memory[size] = peak.growth_mb

    result = {
        "n_samples": n, "chunk_ms_plain": chunk_ms,
        "plain_samples_per_s": n / plain_s,
        "ray_1_actor_samples_per_s": n / ray_s[1], "ray_2_actor_samples_per_s": n / ray_s[2],
        "ray_overhead_pct_end_to_end": 100 * (ray_s[1] - plain_s) / plain_s,
        "ray_1_actor_steady_samples_per_s": steady[1], "ray_2_actor_steady_samples_per_s": steady[2],
        "ray_overhead_pct_steady": 100 * (n / plain_s - steady[1]) / steady[1],
        "scaling_2_vs_1_end_to_end": ray_s[1] / ray_s[2],
        "scaling_2_vs_1_steady": steady[2] / steady[1],
        "load_average_1min_at_end": psutil.getloadavg()[0],
        "driver_peak_rss_growth_mb": {str(k): v for k, v in memory.items()},
        "machine_cpus": psutil.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampler_throughput.json").write_text(json.dumps(result, indent=2))
    rows = [
        ("compute per chunk (plain)", f"{chunk_ms:.0f} ms"),
        ("plain loop", f"{result['plain_samples_per_s']:.0f} samples/s"),
        ("raygen sample, 1 actor, end to end", f"{result['ray_1_actor_samples_per_s']:.0f} samples/s"),
        ("raygen sample, 2 actors, end to end", f"{result['ray_2_actor_samples_per_s']:.0f} samples/s"),
        ("raygen sample, 1 actor, steady", f"{steady[1]:.0f} samples/s"),
        ("raygen sample, 2 actors, steady", f"{steady[2]:.0f} samples/s"),
        ("Ray overhead end to end (1 actor)", f"{result['ray_overhead_pct_end_to_end']:+.1f} %"),
        ("Ray overhead steady (1 actor)", f"{result['ray_overhead_pct_steady']:+.1f} %  (target < 10 %)"),
        ("2-actor scaling end to end", f"{result['scaling_2_vs_1_end_to_end']:.2f}x"),
        ("2-actor scaling steady", f"{result['scaling_2_vs_1_steady']:.2f}x  (target >= 1.7x)"),
        ("load average (1 min) at end", f"{result['load_average_1min_at_end']:.1f} on {psutil.cpu_count()} cpus"),
    ] + [(f"driver peak RSS growth, N={k}", f"{v:.1f} MB") for k, v in memory.items()]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
