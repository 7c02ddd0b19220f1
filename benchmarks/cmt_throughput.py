"""Trials/s of the causal-mechanism-transfer Gasoline protocol: a plain loop vs Ray Tune with 1 and 2 workers.

The same trial specs (raygen.workloads.cmt.plan on a slice of the Gasoline protocol: every method of
jobs/cmt_gasoline.yaml, one INN setting, a few targets, one split) run three ways in one process:
- plain loop: `run_trial` for each spec in turn, in this process (one torch thread);
- Ray Tune, 1 worker: the workload's Tune trainable with max_concurrent_trials=1;
- Ray Tune, 2 workers: the same with max_concurrent_trials=2 (local Ray with num_cpus=2).
Each arm runs `--repeats` times, interleaved; reported per arm: trials/s of every repeat and the
best, and the ratio of best trials/s to the plain loop's. Every arm must give the same selected
test MSEs (checked).

Decision rule (written before the run): Ray Tune is worth using for this protocol on a 2-core
machine if 2 workers give more trials/s than the plain loop in the best repeat (ratio > 1); the
1-worker ratio measures Tune's own per-trial overhead (expected < 1). The load average before and
after is recorded: the machine is shared, so absolute rates move with other users' load.

    python benchmarks/cmt_throughput.py [--quick] [--targets N] [--epochs E] [--repeats R]

Writes benchmarks/results/cmt_throughput[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from raygen import runtime
from raygen.jobs import load_job
from raygen.workloads.cmt import collect, fit_trials, load_panel, make_trainable, plan, run_trial


def plain_loop(specs, panel, job) -> dict[tuple, float]:
    import torch

    before = torch.get_num_threads()
    out = {}
    for spec in specs:
        evals = run_trial({"trial": spec}, panel=panel, job=job)
        out[_key(spec)] = min(evals, key=lambda e: e["loocv_mse"])["test_mse"]
    torch.set_num_threads(before)
    return out


def _key(t) -> tuple:
    return (t["target"], t["n"], t["split"], t["method"])


def ray_tune(specs, config, panel, workers: int) -> dict[tuple, float]:
    with tempfile.TemporaryDirectory(prefix="cmt-bench-") as root:
        results = fit_trials(specs, make_trainable(config, panel), {"storage_path": root}, max_concurrent=workers,
                             progress=False)
        return {_key(t): t["test_mse"] for t in collect(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 targets, 10 epochs, 1 repeat")
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.targets, args.epochs, args.repeats = 2, 10, 1

    base = load_job("jobs/cmt_gasoline.yaml").config
    panel = load_panel(base)
    config = base.replace(targets=list(panel.names[: args.targets]), splits=1, epochs=args.epochs,
                          eval_every=min(base.eval_every, args.epochs))
    specs = plan(config, panel)
    job = config.to_dict()
    runtime.init(num_cpus=2)
    run_trial({"trial": specs[0]}, panel=panel, job=job)  # warm-up (imports, first-call costs), untimed
    arms = {"plain loop": lambda: plain_loop(specs, panel, job),
            "Ray Tune, 1 worker": lambda: ray_tune(specs, config, panel, 1),
            "Ray Tune, 2 workers": lambda: ray_tune(specs, config, panel, 2)}
    results = {"trials": len(specs), "targets": config.targets, "methods": config.methods, "epochs": config.epochs,
               "cpus": os.cpu_count(), "load_before": os.getloadavg(), "arms": {a: {"trials_per_s": []} for a in arms}}
    answers = {}
    for _ in range(args.repeats):
        for arm, fn in arms.items():
            start = time.perf_counter()
            answers[arm] = fn()
            results["arms"][arm]["trials_per_s"].append(len(specs) / (time.perf_counter() - start))
    results["load_after"] = os.getloadavg()
    reference = answers["plain loop"]
    results["same_results"] = all(
        set(a) == set(reference) and all(np.isclose(a[k], reference[k], rtol=1e-9) for k in a) for a in answers.values())
    plain = max(results["arms"]["plain loop"]["trials_per_s"])
    for r in results["arms"].values():
        r["best"] = max(r["trials_per_s"])
        r["ratio_to_plain"] = r["best"] / plain
    results["ray_pays_off"] = results["arms"]["Ray Tune, 2 workers"]["ratio_to_plain"] > 1.0
    runtime.shutdown()

    print(f"{len(specs)} trials ({args.targets} targets x 1 split x {len(config.methods)} methods, "
          f"{config.epochs} GCL epochs); load average {results['load_before'][0]:.1f} -> {results['load_after'][0]:.1f}")
    print(f"{'arm':<22} {'trials/s (each repeat)':<28} {'best':>7} {'x plain':>8}")
    for r in results["arms"].values():
        each = ", ".join(f"{v:.3f}" for v in r["trials_per_s"])
        print(f"{arm:<22} {each:<28} {r['best']:>7.3f} {r['ratio_to_plain']:>8.2f}")
    print(f"same results in every arm: {results['same_results']}; 2 Ray workers beat the plain loop: "
          f"{results['ray_pays_off']}")
    out = Path(__file__).parent / "results" / f"cmt_throughput{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
