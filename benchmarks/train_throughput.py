"""Training throughput: the same `train_func` in a plain process vs 1 and 2 Ray Train workers.

Images/s and the fraction of step time blocked on the data iterator are read from the run's own
metrics.jsonl (logged by rank 0 per window of `log_every` steps); the first window (start-up,
first batches) is dropped. Ray gives each training worker 1 CPU and sets its torch threads to 1,
so the plain baseline runs with torch.set_num_threads(1) as well: the overhead figure compares
like with like. Writes benchmarks/results/train_throughput.json and prints a table.

    python benchmarks/train_throughput.py           # 200 steps per arm
    python benchmarks/train_throughput.py --quick   # 40 steps per arm
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from raygen import runtime
from raygen.diffusion.train import train_func
from raygen.workloads.train import CONFIG, run


def windows(run_dir: Path) -> dict:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    return {"images_per_s": statistics.mean(r["images_per_s"] for r in rows),
            "data_wait_frac": statistics.mean(r["data_wait_frac"] for r in rows),
            "step_ms": statistics.mean(1000 * 64 / r["images_per_s"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int)
    p.add_argument("--model-size", default="tiny")
    args = p.parse_args()
    steps = args.steps or (40 if args.quick else 200)
    base = dict(steps=steps, batch_size=64, log_every=max(steps // 5, 1), checkpoint_every=steps, sample_every=0,
                sadm_lambda=0.1, sadm_warmup=0, model_size=args.model_size)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        train_func(dict(base, name="plain", storage_path=tmp))
        results["plain process"] = {**windows(Path(tmp) / "plain"), "wall_s": time.perf_counter() - t0}
        runtime.init(num_cpus=2)
        for workers in (1, 2):
            name = f"ray{workers}"
            t0 = time.perf_counter()
            run(CONFIG.from_dict(dict(base, name=name, storage_path=tmp, num_workers=workers)))
            results[f"Ray Train x{workers}"] = {**windows(Path(tmp) / name), "wall_s": time.perf_counter() - t0}
    plain, ray1, ray2 = (results[k]["images_per_s"] for k in ("plain process", "Ray Train x1", "Ray Train x2"))
    out = {"steps": steps, "global_batch": 64, "model_size": args.model_size, "quick": args.quick,
           "arms": results, "ray_overhead_pct_1_worker": 100 * (1 - ray1 / plain), "scaling_2_vs_1": ray2 / ray1}
    path = Path(__file__).parent / "results" / "train_throughput.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"{steps} steps, global batch 64, {args.model_size} U-Net, SADM on")
    print(f"{'arm':<16}{'images/s':>10}{'step ms':>10}{'data wait %':>13}{'wall s':>9}")
    for arm, r in results.items():
        print(f"{arm:<16}{r['images_per_s']:>10.1f}{r['step_ms']:>10.1f}{100 * r['data_wait_frac']:>13.2f}{r['wall_s']:>9.1f}")
    print(f"Ray Train overhead at 1 worker: {out['ray_overhead_pct_1_worker']:.1f}%   2-worker scaling: "
          f"{out['scaling_2_vs_1']:.2f}x   (wrote {path})")


if __name__ == "__main__":
    main()
