"""Sampler quality on "mog4" with exact scores, at equal score-evaluation budgets (issue 2).

MMDGS full/diag/iso, single sigma = 0.2 (the paper's setting: 30 Gibbs steps) and annealed
(10 geometric levels 3.0 -> 0.2, 3 steps each), against Langevin (ULA at sigma = 0.2, 30 steps),
annealed Langevin (10 x 3) and the Tweedie mean-only chain (single and annealed). Every chain
makes 30 score evaluations per sample; MMDGS full/diag also make Hessian(-vector) products
(column hvp_evals). Chains start from N(0, 3^2 I). "exact" rows are exact samples from the
target (the Monte-Carlo floor of each metric). Mean +- std over seeds.

    .venv/bin/python benchmarks/sampler_quality.py [--quick]

writes benchmarks/results/sampler_quality.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from raygen.sampling import SAMPLERS, TARGETS, compare_to_truth, initial_state

SINGLE = [0.2]
ANNEALED = [3.0 * (0.2 / 3.0) ** (i / 9) for i in range(10)]
METRICS = ("mode_weight_error", "within_mode_var", "within_mode_var_error", "energy_distance")


def configurations(langevin_steps: list[float]) -> dict[str, tuple[str, list[float], dict]]:
    configs = {}
    for covariance in ("full", "diag", "iso"):
        configs[f"mmdgs-{covariance} single"] = ("mmdgs", SINGLE, dict(steps_per_level=30, covariance=covariance))
        configs[f"mmdgs-{covariance} annealed"] = ("mmdgs", ANNEALED, dict(steps_per_level=3, covariance=covariance))
    configs["tweedie mean-only single"] = ("tweedie", SINGLE, dict(steps_per_level=30))
    configs["tweedie mean-only annealed"] = ("tweedie", ANNEALED, dict(steps_per_level=3))
    for eps in langevin_steps:
        configs[f"langevin step={eps:g}"] = ("langevin", SINGLE, dict(steps_per_level=30, step_size=eps))
        configs[f"annealed_langevin eps={eps:g}"] = (
            "annealed_langevin",
            ANNEALED,
            dict(steps_per_level=3, step_size=eps),
        )
    return configs


def summarize(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 400 samples, 2 seeds")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--langevin-step-sizes", type=float, nargs="+", default=[0.005, 0.02])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampler_quality.json"))
    args = parser.parse_args()
    n, n_seeds = (400, 2) if args.quick else (args.samples, args.seeds)

    target = TARGETS["mog4"]()
    rows: dict[str, dict] = {}
    for name, (sampler, sigmas, kwargs) in configurations(args.langevin_step_sizes).items():
        runs, info, seconds = [], {}, 0.0
        for rep in range(n_seeds):
            seeds = list(range(rep * n, (rep + 1) * n))
            x0 = initial_state(seeds, (2,), scale=3.0)
            start = time.perf_counter()
            x, info = SAMPLERS[sampler](target, x0, sigmas, seeds=seeds, **kwargs)
            seconds += time.perf_counter() - start
            runs.append(compare_to_truth(target, x, generator=torch.Generator().manual_seed(10_000 + rep)))
        rows[name] = {
            "sampler": sampler,
            "sigmas": sigmas,
            "kwargs": kwargs,
            "score_evals": info["score_evals"],
            "hvp_evals": info.get("hvp_evals", 0),
            "seconds_per_run": seconds / n_seeds,
            **{m: summarize([r[m] for r in runs]) for m in METRICS},
            "mode_weights": summarize([r["mode_weights"][0] for r in runs]) | {
                "per_mode_mean": [sum(r["mode_weights"][k] for r in runs) / n_seeds for k in range(4)]
            },
        }
        print(f"done {name}", flush=True)
    exact = [
        compare_to_truth(target, target.sample(n, torch.Generator().manual_seed(rep)), generator=torch.Generator().manual_seed(10_000 + rep))
        for rep in range(n_seeds)
    ]
    rows["exact samples"] = {"score_evals": 0, "hvp_evals": 0, **{m: summarize([r[m] for r in exact]) for m in METRICS}}

    result = {
        "benchmark": "sampler_quality",
        "target": "mog4: modes (+-1.5, +-1.5), weights (0.1, 0.2, 0.3, 0.4), within-mode variance 0.04",
        "samples_per_run": n,
        "seeds": n_seeds,
        "init": "N(0, 3^2 I)",
        "quick": args.quick,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    header = f"{'sampler':32s} {'score':>5s} {'hvp':>4s} {'mode-weight err':>17s} {'within-mode var':>17s} {'energy dist':>17s}"
    print(f"\nmog4, {n} samples x {n_seeds} seeds, mean +- std (true within-mode variance 0.04)")
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        cells = [f"{row[m]['mean']:.4f}+-{row[m]['std']:.4f}" for m in ("mode_weight_error", "within_mode_var", "energy_distance")]
        print(f"{name:32s} {row['score_evals']:5d} {row['hvp_evals']:4d} " + " ".join(f"{c:>17s}" for c in cells))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
