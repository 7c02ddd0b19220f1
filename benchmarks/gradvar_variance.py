"""The variance table of Tokui & Sato (ICML 2017) on binarised digits over 3 seeds, and Tune throughput.

Arm 1 — variance table. For each model (linear 16-16-64, deep 16-16-16-16-64) and estimator (LR,
LR+C, LR+C+IDB = NVIL, LEG, LEG+C, optimal), train an SBN with RMSprop at one learning rate (3e-3) for
each seed in {0, 1, 2}, measuring every `eval_every` iterations the per-element variance of the
inference-network gradient over `variance_batches` fresh mini-batches (mean over elements). Per run
the summary is the mean over evaluations of log10 variance; per (model, estimator) the table shows
its mean over seeds with a 95% t-interval (2 degrees of freedom), the final validation ELBO and
ms per training iteration (wall-clock and CPU time of the run's process). The runs are pure torch (no Ray), in a process pool.

Decision rule (fixed before running). The ordering tested is LR ≫ LR+C > LR+C+IDB ≳ LEG ≈ optimal.
Only LR ≫ LR+C > LR+C+IDB is a published variance ordering. "LR+C+IDB ≳ LEG ≈ optimal" is not a
claim of the paper's abstract, which says modern estimators *perform* close to the optimal one (a
statement about the objective reached, not the variance); and here every estimator trains its own
parameters, so their variances are not measured at the same θ, φ and batches. Those two rows are
reported as "unverified" with the measured gap beside them — never as supported or contradicted.
With d = the per-seed difference of mean log10 variances (paired by seed), a published claim is
  - "supported" when the 95% t-interval of the mean d lies entirely on its side: ≫: d > 1
    (10x); >: d > 0; ≳: d > −log10 2 (at most 2x below); ≈: |d| < log10 2 (within 2x);
  - "contradicted" when the interval lies entirely on the other side;
  - "undecided" otherwise.
"Plain LR worst in ELBO" is supported when LR's mean final validation ELBO is the lowest and its
interval does not overlap the next lowest one.

LEG+C (LEG with its local signal centred by a moving average, `leg_baseline`) is not in the paper:
it was added after the first full run found LEG's variance near LR+C's rather than near the optimal
estimator's, to test the explanation that LEG's signal keeps a term F·(w − σ(η)) that a constant
removes without bias. It is reported in the table; no published claim involves it.

Arm 1b — matched parameters (`--arm matched`). The table above has each estimator on its own
training trajectory. Here one SBN per (model, seed) is trained with the optimal estimator, and at
every evaluation the variance of LR, LEG and optimal is measured at those same θ, φ and on the same
`variance_batches` mini-batches (estimators without learned baseline state only: LR+C, NVIL and
LEG+C would need their baselines trained along). Reported: per model, mean over seeds of the mean
log10 variance over evaluations, and the paired LEG − optimal gap with a 95% t-interval. It
measures the variance gap; it does not test the paper's claim, which is about performance.
`--units 200` is the paper's width; `--iterations 20000` a long run. `--progress FILE` appends
one JSON line per (run, evaluation) as it goes, and `--from-progress FILE` prints the same table
from those lines, over the evaluations every seed reached, so a run stopped early still reports
how far it got.

Arm 1c — performance (`--arm performance`), the abstract's claim that modern estimators *perform*
close to the optimal one. LR, NVIL, LEG and optimal each train their own SBN (as in arm 1) for
`--iterations`; measured at the end: validation ELBO (single-sample, fixed per-example noise) and
the test importance-weighted bound (K = `iw_samples`). Decision rule (fixed before running): per
estimator E in {NVIL, LEG} and metric, d = metric(optimal) − metric(E) per seed (nats per example,
paired by seed; positive: optimal better) with its 95 % t-interval;
  - "supported" (E performs close to optimal) when the interval lies inside (−1, 1) nat;
  - "contradicted" when it lies entirely above +1 (E worse than optimal by more than 1 nat);
  - "E better by > 1 nat" when it lies entirely below −1 (not close, but not the claim's failure);
  - "undecided" otherwise.
The 1-nat band is a choice made here (the ELBOs are about −27 nats on 64 pixels); the paper gives
no tolerance. "Plain LR worst" is judged as in arm 1.

Arm 2 — Tune throughput. The same small grid of `raygen gradvar` trials (the workload's own
trainable) run by one Tuner with at most 1 and then at most 2 concurrent trials on a local Ray with
2 CPUs; trials/s for each and the ratio. On a shared machine the ratio is bounded by the cores
actually free, which the JSON records (load average before and after).

    .venv/bin/python benchmarks/gradvar_variance.py [--quick] [--workers N]
    .venv/bin/python benchmarks/gradvar_variance.py --arm matched [--units 200] [--iterations 20000]
    .venv/bin/python benchmarks/gradvar_variance.py --arm performance [--iterations N]
writes benchmarks/results/gradvar_<arm>[_<tag>].json and prints the tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# (a, b, relation, published): unpublished relations are measured but not judged (see the module docs)
ORDER = (("lr", "lr_baseline", "≫", True), ("lr_baseline", "nvil", ">", True), ("nvil", "leg", "≳", False),
         ("leg", "optimal", "≈", False))
UNVERIFIED = "unverified (not a published claim; estimators at different parameters)"
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # Student t quantiles for 95% intervals


def one_run(job: dict) -> dict:
    import torch

    from raygen.gradvar.training import TrainSpec, split_digits, train

    torch.set_num_threads(1)
    data = split_digits(0, validation=200, test=200)
    history = []
    train(TrainSpec(**job), *data, report=history.append)
    return {**job, "log10_var": statistics.fmean(math.log10(h["grad_var"]) for h in history),
            "final_var": history[-1]["grad_var"], "val_elbo": history[-1]["val_elbo"],
            "test_iw_bound": history[-1]["test_iw_bound"], "ms_per_iteration": 1000 * history[-1]["seconds_per_iteration"],
            "cpu_ms_per_iteration": 1000 * history[-1]["cpu_seconds_per_iteration"],
            "curve": [(h["iteration"], h["grad_var"]) for h in history]}


def interval(values: list[float]) -> tuple[float, float, float]:
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def verdict(sym: str, lo: float, hi: float) -> str:
    if sym == "≈":
        b = math.log10(2)
        return "supported" if -b < lo and hi < b else "contradicted" if hi < -b or lo > b else "undecided"
    bound = {"≫": 1.0, ">": 0.0, "≳": -math.log10(2)}[sym]
    return "supported" if lo > bound else "contradicted" if hi < bound else "undecided"


def variance_arm(args) -> dict:
    jobs = [dict(model=m, estimator=e, lr=args.lr, seed=s, units=args.units, batch_size=args.batch_size,
                 iterations=args.iterations, eval_every=args.eval_every, variance_batches=args.variance_batches,
                 iw_samples=args.iw_samples)
            for m, e, s in itertools.product(args.models, args.estimators, args.seeds)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(one_run, jobs))
    rows, claims, performance = [], [], []
    for model in args.models:
        by = {e: sorted((r for r in runs if r["model"] == model and r["estimator"] == e), key=lambda r: r["seed"])
              for e in args.estimators}
        for e, rs in by.items():
            rows.append({"model": model, "estimator": e, "log10_var": interval([r["log10_var"] for r in rs]),
                         "val_elbo": interval([r["val_elbo"] for r in rs]),
                         "test_iw_bound": interval([r["test_iw_bound"] for r in rs]),
                         "ms_per_iteration": statistics.fmean(r["ms_per_iteration"] for r in rs),
                         "cpu_ms_per_iteration": statistics.fmean(r["cpu_ms_per_iteration"] for r in rs)})
        for a, b, sym, published in ORDER:
            if a in by and b in by:
                d = interval([ra["log10_var"] - rb["log10_var"] for ra, rb in zip(by[a], by[b])])
                claims.append({"model": model, "claim": f"{a} {sym} {b}", "log10_ratio": d, "published": published,
                               "verdict": verdict(sym, d[1], d[2]) if published else UNVERIFIED})
        if "lr" in by and len(by) > 1:
            elbo = {e: interval([r["val_elbo"] for r in rs]) for e, rs in by.items()}
            others = sorted((v for e, v in elbo.items() if e != "lr"), key=lambda v: v[0])
            worst = elbo["lr"][0] < others[0][0]
            verdict_elbo = ("supported" if worst and elbo["lr"][2] < others[0][1]
                            else "contradicted" if not worst and elbo["lr"][1] > others[0][2] else "undecided")
            claims.append({"model": model, "claim": "lr worst validation ELBO", "log10_ratio": None,
                           "verdict": verdict_elbo})
        performance.extend(performance_claims(runs, model, args.estimators))
    return {"runs": runs, "rows": rows, "claims": claims, "performance": performance,
            "seconds": time.perf_counter() - start}


MATCHED = ("lr", "leg", "optimal")


def matched_run(job: dict) -> dict:
    """One SBN trained with the optimal estimator; LR, LEG and optimal variances at every evaluation.
    `progress` (a path or None, popped from the job): one JSON line per evaluation, appended."""
    import dataclasses

    import torch

    from raygen.gradvar.estimators import make_baselines
    from raygen.gradvar.training import TrainSpec, gradient_variance, split_digits, train

    torch.set_num_threads(1)
    job = dict(job)
    progress = job.pop("progress", None)
    data = split_digits(0, validation=200, test=200)
    spec = TrainSpec(**job)
    curves: dict[str, list[float]] = {e: [] for e in MATCHED}

    def on_eval(model, iteration: int) -> None:
        for e in MATCHED:  # same parameters, same batches (the batch keys depend on seed and iteration only)
            other = dataclasses.replace(spec, estimator=e)
            curves[e].append(math.log10(gradient_variance(model, data[0], other, make_baselines(model, e), iteration)))
        if progress:
            with open(progress, "a") as f:  # one short line per write: the pool's processes do not interleave it
                f.write(json.dumps({"model": spec.model, "units": spec.units, "seed": spec.seed,
                                    "iteration": iteration, **{e: curves[e][-1] for e in MATCHED}}) + "\n")

    train(spec, *data, on_eval=on_eval)
    return {**job, "log10_var": {e: statistics.fmean(v) for e, v in curves.items()}, "curves": curves}


def matched_rows(runs: list[dict], models: list[str]) -> list[dict]:
    """Per model: mean over seeds of each run's mean log10 variance, and the paired LEG − optimal gap."""
    rows = []
    for model in models:
        mine = sorted((r for r in runs if r["model"] == model), key=lambda r: r["seed"])
        rows.append({"model": model, "seeds": len(mine),
                     **{e: interval([r["log10_var"][e] for r in mine]) for e in MATCHED},
                     "leg_minus_optimal": interval([r["log10_var"]["leg"] - r["log10_var"]["optimal"] for r in mine])})
    return rows


def matched_arm(args) -> dict:
    jobs = [dict(model=m, estimator="optimal", lr=args.lr, seed=s, units=args.units, batch_size=args.batch_size,
                 iterations=args.iterations, eval_every=args.eval_every, variance_batches=args.variance_batches,
                 iw_samples=args.iw_samples, progress=args.progress)
            for m, s in itertools.product(args.models, args.seeds)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(matched_run, jobs))
    return {"runs": runs, "rows": matched_rows(runs, args.models), "seconds": time.perf_counter() - start}


def runs_from_progress(path: Path) -> tuple[list[dict], int]:
    """Runs rebuilt from a --progress file, cut at the last evaluation every run reached (so seeds are
    compared over the same iterations); also that iteration."""
    curves: dict[tuple, dict[int, dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            curves.setdefault((rec["model"], rec["seed"]), {})[rec["iteration"]] = rec
    reached = min(max(c) for c in curves.values())
    runs = [{"model": model, "seed": seed,
             "log10_var": {e: statistics.fmean(c[it][e] for it in sorted(c) if it <= reached) for e in MATCHED}}
            for (model, seed), c in curves.items()]
    return runs, reached


def performance_claims(runs: list[dict], model: str, estimators: list[str]) -> list[dict]:
    """The abstract's 'perform close to optimal', judged by the rule in the module docstring."""
    claims = []
    by = {e: sorted((r for r in runs if r["model"] == model and r["estimator"] == e), key=lambda r: r["seed"])
          for e in estimators}
    for e in ("nvil", "leg"):
        if e not in by or "optimal" not in by:
            continue
        for metric in ("val_elbo", "test_iw_bound"):
            d = interval([ro[metric] - re[metric] for ro, re in zip(by["optimal"], by[e])])
            v = ("supported" if -1 < d[1] and d[2] < 1 else "contradicted" if d[1] > 1
                 else f"{e} better by > 1 nat" if d[2] < -1 else "undecided")
            claims.append({"model": model, "claim": f"{e} performs close to optimal ({metric})",
                           "optimal_minus_estimator": d, "verdict": v})
    return claims


def throughput_arm(args) -> dict:
    from ray import tune

    from raygen import runtime
    from raygen.gradvar.training import split_digits
    from raygen.workloads.gradvar import GradvarConfig, tune_trial

    runtime.init(num_cpus=2)
    config = GradvarConfig(models=["linear"], estimators=["lr", "optimal"], lrs=[1e-3, 3e-3],
                           seeds=list(range(args.tune_seeds)), batch_size=args.batch_size,
                           iterations=args.tune_iterations, eval_every=args.tune_iterations, variance_batches=5,
                           iw_samples=5)
    trainable = tune.with_resources(tune.with_parameters(tune_trial, data=split_digits(0, validation=200, test=200),
                                                         job=config.to_dict()), {"cpu": 1})
    space = {"model": tune.grid_search(config.models), "estimator": tune.grid_search(config.estimators),
             "lr": tune.grid_search(config.lrs), "seed": tune.grid_search(config.seeds)}
    n = len(config.estimators) * len(config.lrs) * len(config.seeds)
    out = {"trials": n, "iterations_per_trial": config.iterations, "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as storage:
        for workers in (1, 2):
            start = time.perf_counter()
            results = tune.Tuner(trainable, param_space=space,
                                 tune_config=tune.TuneConfig(max_concurrent_trials=workers),
                                 run_config=tune.RunConfig(name=f"w{workers}", storage_path=storage, verbose=0)).fit()
            seconds = time.perf_counter() - start
            assert not results.errors, results.errors
            out[f"workers_{workers}"] = {"seconds": seconds, "trials_per_s": n / seconds}
    out["speedup_2_vs_1"] = out["workers_2"]["trials_per_s"] / out["workers_1"]["trials_per_s"]
    out["load_after"] = os.getloadavg()[0]
    runtime.shutdown()
    return out


def print_matched(matched: dict, fmt) -> None:
    for r in matched["rows"]:
        print(f"{r['model']:8} " + "  ".join(f"{e} {fmt(r[e])}" for e in MATCHED)
              + f"  LEG - optimal {fmt(r['leg_minus_optimal'])} (log10; {r['seeds']} seeds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="linear model, 2 seeds, few iterations (smoke run)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the variance arm")
    parser.add_argument("--arm", choices=("all", "matched", "performance"), default="all",
                        help="matched: only arm 1b; performance: only arm 1c")
    parser.add_argument("--models", nargs="+", choices=("linear", "deep"), help="default: both (linear if --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (0 1 if --quick)")
    parser.add_argument("--units", type=int, default=16, help="units per layer (the paper's width: 200)")
    parser.add_argument("--iterations", type=int, help="default 400 (40 if --quick)")
    parser.add_argument("--eval-every", type=int, help="default 100 (20 if --quick)")
    parser.add_argument("--variance-batches", type=int, help="default 40 (5 if --quick)")
    parser.add_argument("--progress", type=Path, help="matched arm: append one JSON line per evaluation here")
    parser.add_argument("--from-progress", type=Path, help="matched arm: print the table from a --progress file")
    parser.add_argument("--tag", default="", help="suffix of the result file's name")
    args = parser.parse_args()
    args.models = args.models or (["linear"] if args.quick else ["linear", "deep"])
    args.estimators = (["lr", "nvil", "leg", "optimal"] if args.arm == "performance"
                       else ["lr", "lr_baseline", "nvil", "leg", "leg_baseline", "optimal"])
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    args.lr, args.batch_size = 3e-3, 50
    args.iterations = args.iterations or (40 if args.quick else 400)
    args.eval_every = args.eval_every or (20 if args.quick else 100)
    args.variance_batches = args.variance_batches or (5 if args.quick else 40)
    args.iw_samples = 5 if args.quick else 50
    args.tune_seeds, args.tune_iterations = (1, 20) if args.quick else (2, 100)
    suffix = ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")

    fmt = lambda t: f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"
    if args.from_progress:
        runs, reached = runs_from_progress(args.from_progress)
        print(f"matched arm from {args.from_progress}: {len(runs)} runs, evaluations up to iteration {reached}")
        print_matched({"rows": matched_rows(runs, sorted({r["model"] for r in runs}))}, fmt)
        return
    if args.arm in ("matched", "performance"):
        result = matched_arm(args) if args.arm == "matched" else variance_arm(args)
        out = Path(__file__).parent / "results" / f"gradvar_{args.arm}{suffix}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                   args.arm: result}, indent=1))
        print(f"{args.arm} arm: {len(result['runs'])} runs, seeds {args.seeds}, {args.units} units, "
              f"{args.iterations} iterations, {args.variance_batches} batches per variance ({result['seconds']:.0f} s)")
        if args.arm == "matched":
            print_matched(result, fmt)
        else:
            for r in result["rows"]:
                print(f"{r['model']:8} {r['estimator']:10} val ELBO {fmt(r['val_elbo'])}  test IW bound "
                      f"{fmt(r['test_iw_bound'])}  log10 var {fmt(r['log10_var'])}")
            for c in [c for c in result["claims"] if c["claim"].startswith("lr worst")] + result["performance"]:
                d = c.get("optimal_minus_estimator")
                print(f"{c['model']:8} {c['claim']:44} {fmt(d) if d else '':24} {c['verdict']}")
        print(f"wrote {out}")
        return
    variance = variance_arm(args)
    throughput = throughput_arm(args)
    result = {"settings": vars(args), "variance": variance, "throughput": throughput}
    out = Path(__file__).parent / "results" / f"gradvar_variance{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    print(f"variance arm: {len(variance['runs'])} runs, lr {args.lr}, {args.iterations} iterations, "
          f"{args.variance_batches} batches per variance, seeds {args.seeds} ({variance['seconds']:.0f} s)")
    print(f"{'model':8} {'estimator':12} {'mean log10 var [95% CI]':28} {'val ELBO [95% CI]':28} {'ms/it':>6} "
          f"{'CPU ms/it':>9}")
    for r in variance["rows"]:
        print(f"{r['model']:8} {r['estimator']:12} {fmt(r['log10_var']):28} {fmt(r['val_elbo']):28} "
              f"{r['ms_per_iteration']:6.1f} {r['cpu_ms_per_iteration']:9.1f}")
    print("\nvariance ordering, paired by seed (log10 ratio [95% CI]; only published rows get a verdict):")
    for c in variance["claims"]:
        ratio = "" if c["log10_ratio"] is None else fmt(c["log10_ratio"])
        print(f"{c['model']:8} {c['claim']:28} {ratio:28} {c['verdict']}")
    for c in variance["performance"]:
        print(f"{c['model']:8} {c['claim']:44} {fmt(c['optimal_minus_estimator']):24} {c['verdict']}")
    t = throughput
    print(f"\nTune throughput, {t['trials']} trials of {t['iterations_per_trial']} iterations: "
          f"1 worker {t['workers_1']['trials_per_s']:.3f} trials/s, 2 workers {t['workers_2']['trials_per_s']:.3f} "
          f"trials/s, ratio {t['speedup_2_vs_1']:.2f}x (load average {t['load_before']:.1f} -> {t['load_after']:.1f})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
