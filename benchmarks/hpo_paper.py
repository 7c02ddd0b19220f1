"""Nyström vs CG hypergradients in the paper's form (Hataya & Yamada, AISTATS 2023; issue 28).

Task: per-EXAMPLE loss weights (the paper's form: one weight per training image, weights =
n·softmax(u)) on class-imbalanced digits (raygen.hypergrad.tasks.reweight, linear softmax model,
weight decay 1e-3, balanced validation set of 200, balanced test set of 500) at imbalance 200 /
100 / 50, seeds 0-4 (the seed fixes the split and the Nyström column draws).

Protocol "main": θ carries over between outer steps, 20 outer steps × 50 inner SGD steps (lr 0.1).
The outer optimiser is Adam (lr 0.1) for every arm: its update is invariant to the hypergradient's
scale, so rho (and alpha) act through the solve's direction only, not as a step size.
Arms (all take the same 20 outer steps):
  none              φ fixed at uniform weights (inner training only)
  exact             dense Hessian solve (650 parameters)
  cg                textbook CG, 10 iterations
  reference_cg a=α  the reference library's CG (moskomule/hypergrad), 10 iterations, α ∈ {0.01, 0.1, 1}
  nystrom rel=r     column Nyström rank 10, ρ = r·λ_max, r ∈ {1e-3, 1e-2, 1e-1, 1}; λ_max is the inner
                    Hessian's top eigenvalue, 10 warm-started power iterations per outer step (reported)
  nystrom abs=0.01  column Nyström rank 10 at the paper's absolute ρ = 0.01
Secondary set-ups, reported as such, with the arms none, cg, reference_cg a=0.1, nystrom rel=0.01:
"per_class" (10 per-class weights, raygen's former default) and "reference_protocol"
(per-example; θ and the inner optimiser reset before every outer step, 100 inner steps, as the
reference's example does).
Logged per run: test accuracy and validation loss after the last outer step, the inner gradient norm
‖∇θ f‖ at every hypergradient point and at the initial θ (implicit differentiation assumes 0 at the
point), λ_max (3 warm-started power iterations per outer step; checked at the end against the dense
Hessian's eigvalsh), hypergradient CPU time (for rel=r arms it includes the power iterations), and
the distance left to the inner optimum at the end, ‖θ_T − θ*‖ / ‖θ_0 − θ*‖, with θ* for the final φ
found by damped Newton on the dense Hessian (the inner problem, linear softmax + L2, is strongly
convex).

Decision rule (written and committed before the runs). Paired differences over seeds of final test
accuracy, mean with a 95 % Student-t interval: per imbalance (5 pairs) and pooled (15 pairs).
  C1 nystrom rel=0.01 − cg          (primary)
  C2 nystrom rel=0.01 − reference_cg a=0.1
  C3 nystrom abs=0.01 − cg          (the setting of the issue's per-example finding)
  C4 nystrom rel=0.01 − exact
  C5 nystrom rel=0.01 − none        (does the hypergradient help at all)
  C6 cg − none
A difference is "better" if its interval's lower end is > 0, "worse" if its upper end is < 0,
otherwise "not resolved". The paper's claim "comparable accuracy" holds if the pooled intervals of C1
and C2 both have lower ends >= −0.01 (a one-point non-inferiority margin); "Nyström better than CG"
holds if C1 pooled is "better". Robustness to ρ holds at an imbalance if the spread (max − min) of
nystrom rel=r's mean test accuracy over its four r is <= 0.01; it is "more robust than the reference
CG's α" if that spread is below reference_cg's spread over its three α at >= 2 of 3 imbalances. The
implicit-differentiation premise is called "met" if the median over runs (all arms but none) of
‖θ_T − θ*‖ / ‖θ_0 − θ*‖ is <= 0.1, else "not met" (the exact arm is then not a gold standard); the
gradient-norm ratio ‖∇θ f(θ_T)‖ / ‖∇θ f(θ_0)‖ is reported beside it. The secondary set-ups get the
comparisons whose arms they run, the same labels and no further claims.

Result, main (2026-12-04, 165 runs, load average 8-20 on 2 cores): C1 pooled +0.011 [+0.007, +0.016]
(14/15) better; C2 −0.006 [−0.008, −0.003] (1/15) worse, inside the margin: comparable accuracy
holds, "Nyström better than CG" holds for textbook CG, not for the reference CG. ρ spread 0.008 /
0.004 / 0.002 (robust), reference CG's α spread 0.022 / 0.018 / 0.015. Premise not met: median
‖θ_T − θ*‖ / ‖θ_0 − θ*‖ = 0.22 (gradient-norm ratio 0.007).
Result, per_class (imbalance 100 on 2026-12-04 ~18:00, 200 and 50 added 2026-12-05 00:19-00:26 with
--workers 2 at load average 12-23; 60 runs, 5 seeds): C1 pooled +0.002 [−0.004, +0.007] (7/15) not
resolved; C2 −0.006 [−0.009, −0.003] (1/15) worse, inside the margin: comparable accuracy holds, "Nyström
better than CG" does not; C5 +0.040 [+0.035, +0.045]. Premise not met: distance ratio 0.18 (gradient-norm
ratio 0.004). (At imbalance 100 alone, 5 seeds: C1 +0.003 [−0.013, +0.019], C2 −0.003 [−0.010, +0.004].)
Result, reference_protocol (2026-12-04 23:23 - 2026-12-05 00:26, 60 runs, 1 worker, 3,762 s, load average
0.5 at the start, 17-37 during): C1 pooled +0.028 [+0.020, +0.036] (15/15) better, at every imbalance;
C2 −0.006 [−0.011, −0.001] (4/15) worse (−0.013 [−0.025, −0.001] at 200, not resolved at 100 and 50):
its lower end is 0.0006 past the margin, so comparable accuracy is NOT established by the rule; C5
+0.175 [+0.160, +0.189], C6 +0.147 [+0.136, +0.158]. Premise not met, further than in main: median
distance ratio 0.57, gradient-norm ratio 0.067 (‖∇θ f‖ ≈ 0.12-0.13 at every hypergradient point).

    .venv/bin/python benchmarks/hpo_paper.py [--quick] [--setup main|per_class|reference_protocol] [--workers 2] [--imbalances 200,100,50]
writes benchmarks/results/hpo_paper_<setup>[_quick].json and prints a table. Each finished run is
appended to hpo_paper_<setup>[_quick].runs.jsonl as it ends (seed by seed), and a re-run reuses the
runs recorded there: an interrupted run resumes, and `--summarise` tables what is there, over the
seeds whose runs are all complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from scipy.stats import t as student_t

# arm -> (solver, solver kwargs, rho_scale)
ARMS = {
    "none": ("none", {}, "absolute"),
    "exact": ("exact", {}, "absolute"),
    "cg": ("cg", {"iters": 10}, "absolute"),
    **{f"reference_cg a={a:g}": ("reference_cg", {"iters": 10, "alpha": a}, "absolute") for a in (0.01, 0.1, 1.0)},
    **{f"nystrom rel={r:g}": ("nystrom", {"rank": 10, "rho": r}, "lambda_max") for r in (1e-3, 1e-2, 1e-1, 1.0)},
    "nystrom abs=0.01": ("nystrom", {"rank": 10, "rho": 0.01}, "absolute"),
}
SECONDARY_ARMS = ["none", "cg", "reference_cg a=0.1", "nystrom rel=0.01"]
SETUPS = {  # name -> (per, reset θ every outer step, inner steps per outer step, arms)
    "main": ("example", False, 50, list(ARMS)),
    "per_class": ("class", False, 50, SECONDARY_ARMS),
    "reference_protocol": ("example", True, 100, SECONDARY_ARMS),
}
COMPARISONS = {
    "C1": ("nystrom rel=0.01", "cg"),
    "C2": ("nystrom rel=0.01", "reference_cg a=0.1"),
    "C3": ("nystrom abs=0.01", "cg"),
    "C4": ("nystrom rel=0.01", "exact"),
    "C5": ("nystrom rel=0.01", "none"),
    "C6": ("cg", "none"),
}
RHO_SWEEP = [a for a in ARMS if a.startswith("nystrom rel=")]
ALPHA_SWEEP = [a for a in ARMS if a.startswith("reference_cg")]
MARGIN = 0.01  # non-inferiority margin and robustness spread, in test accuracy
POWER_ITERS = 3  # per outer step, warm-started: the λ_max estimate's cost


def inner_optimum_check(opt, task) -> dict:
    """Distance left to the inner optimum θ* of the current φ, and the dense Hessian's λ_max at θ_T.

    θ* by damped Newton from θ_T on the dense Hessian (strongly convex inner problem), at most 10
    iterations, stopped when the gradient norm stops falling (float32 round-off).
    """
    import torch

    from raygen.models.params import pack, unpack

    shapes = [p.shape for p in opt.params]
    phi = tuple(h.detach() for h in opt.raw)
    f = lambda t: opt.inner_loss(unpack(t, shapes), phi)  # noqa: E731
    theta = pack([p.detach() for p in opt.params])
    star, best = theta.clone(), math.inf
    lam_dense = None
    for _ in range(10):
        g = torch.func.grad(f)(star)
        H = torch.func.hessian(f)(star).double()
        if lam_dense is None:
            lam_dense = float(torch.linalg.eigvalsh(0.5 * (H + H.T))[-1])
        if float(g.norm()) >= best:
            break
        best = float(g.norm())
        step = torch.linalg.solve(H, g.double()).float()
        t, f0 = 1.0, float(f(star))
        while float(f(star - t * step)) > f0 and t > 1e-4:  # backtrack: Newton's full step can overshoot far out
            t /= 2
        star = star - t * step
    theta0 = pack(list(task.params))
    return {"distance_ratio": float((theta - star).norm() / (theta0 - star).norm()), "grad_norm_at_star": best,
            "lambda_max_dense": lam_dense}


def one_run(job: dict) -> dict:
    import torch

    from raygen.errors import UserError
    from raygen.hypergrad.bilevel import BilevelOptimizer
    from raygen.hypergrad.tasks import make_task
    from raygen.workloads.tune import task_generators

    torch.set_num_threads(1)
    per, reset, unroll, _ = SETUPS[job["setup"]]
    solver, kwargs, rho_scale = ARMS[job["arm"]]
    task = make_task("reweight", **task_generators(job["seed"]), imbalance=job["imbalance"], per=per)
    opt = BilevelOptimizer(task, solver=solver, solver_kwargs=kwargs, unroll=unroll, inner_lr=0.1,
                           outer_optimizer="adam", outer_lr=0.1, generator=torch.Generator().manual_seed(job["seed"]),
                           rho_scale=rho_scale, power_iters=POWER_ITERS, reset_inner=reset)
    theta0 = tuple(p.detach().clone().requires_grad_(True) for p in task.params)
    grad0 = torch.autograd.grad(opt.inner_loss(theta0, tuple(opt.raw)), theta0)
    out = {**job, "grad_norm_init": float(torch.sqrt(sum((g**2).sum() for g in grad0))), "grad_norms": [],
           "lambda_max": [], "hypergrad_cpu_seconds": 0.0, "failed": None}
    start = time.perf_counter()
    try:
        for _ in range(job["outer_steps"]):
            record = opt.step()
            out["grad_norms"].append(record["inner_grad_norm"])
            out["hypergrad_cpu_seconds"] += record.get("hypergrad_cpu_seconds", 0.0)
            if "lambda_max" in record:
                out["lambda_max"].append(record["lambda_max"])
    except UserError as exc:  # the inner training diverged under the learned weights: a failed run
        out["failed"] = str(exc)
        return out
    return {**out, "test_acc": record["test_acc"], "val_loss": record["val_loss"], "skipped": record["skipped_steps"],
            "seconds": time.perf_counter() - start, **inner_optimum_check(opt, task)}


def paired(xs: list[float], ys: list[float]) -> dict:
    """Mean of the paired differences x − y with its 95 % Student-t interval and the x > y count."""
    d = [x - y for x, y in zip(xs, ys)]
    mean = statistics.mean(d)
    half = float(student_t.ppf(0.975, len(d) - 1)) * statistics.stdev(d) / math.sqrt(len(d))
    label = "better" if mean - half > 0 else "worse" if mean + half < 0 else "not resolved"
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(d), "wins": sum(v > 0 for v in d),
            "label": label}


def summarise(runs: list[dict], setup: str, imbalances: list[float], seeds: list[int]) -> dict:
    arms = SETUPS[setup][3]
    acc = {(r["arm"], r["imbalance"], r["seed"]): r.get("test_acc", math.nan) for r in runs if r["setup"] == setup}
    rows = []
    for imb in imbalances:
        for arm in arms:
            mine = [r for r in runs if r["setup"] == setup and r["arm"] == arm and r["imbalance"] == imb]
            done = [r for r in mine if r["failed"] is None]
            accs = [r["test_acc"] for r in done]
            lam = [v for r in done for v in r["lambda_max"]]
            rows.append({
                "imbalance": imb, "arm": arm, "runs": len(mine), "failed": len(mine) - len(done),
                "test_acc_mean": statistics.mean(accs) if accs else math.nan,
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
                "val_loss_mean": statistics.mean(r["val_loss"] for r in done) if done else math.nan,
                "grad_norm_init": statistics.median(r["grad_norm_init"] for r in mine),
                "grad_norm_first": statistics.median(r["grad_norms"][0] for r in mine if r["grad_norms"]),
                "grad_norm_last": statistics.median(r["grad_norms"][-1] for r in done) if done else math.nan,
                "distance_ratio": statistics.median(r["distance_ratio"] for r in done) if done else math.nan,
                "lambda_max_mean": statistics.mean(lam) if lam else None,
                "lambda_max_range": [min(lam), max(lam)] if lam else None,
                "lambda_max_last_over_dense": statistics.median(r["lambda_max"][-1] / r["lambda_max_dense"] for r in done)
                if lam else None,
                "lambda_max_dense_range": [min(r["lambda_max_dense"] for r in done), max(r["lambda_max_dense"] for r in done)]
                if done else None,
                "skipped_steps": sum(r["skipped"] for r in done),
                "hypergrad_cpu_seconds_mean": statistics.mean(r["hypergrad_cpu_seconds"] for r in mine),
            })
    comparisons = {}
    for name, (a, b) in COMPARISONS.items():
        if a not in arms or b not in arms:
            continue
        pairs = {imb: ([acc[a, imb, s] for s in seeds], [acc[b, imb, s] for s in seeds]) for imb in imbalances}
        comparisons[name] = {"arms": f"{a} − {b}", **{str(imb): paired(*xy) for imb, xy in pairs.items()},
                             "pooled": paired([x for xs, _ in pairs.values() for x in xs],
                                              [y for _, ys in pairs.values() for y in ys])}
    mean_of = {(t["arm"], t["imbalance"]): t["test_acc_mean"] for t in rows}
    spread = lambda sweep, imb: max(mean_of[a, imb] for a in sweep) - min(mean_of[a, imb] for a in sweep)
    verdict = {}
    if "C1" in comparisons and "C2" in comparisons:
        verdict["comparable_accuracy"] = min(comparisons["C1"]["pooled"]["lo"], comparisons["C2"]["pooled"]["lo"]) >= -MARGIN
        verdict["nystrom_better_than_cg"] = comparisons["C1"]["pooled"]["label"] == "better"
    if all(a in arms for a in RHO_SWEEP + ALPHA_SWEEP):
        verdict["rho_spread"] = {str(imb): spread(RHO_SWEEP, imb) for imb in imbalances}
        verdict["alpha_spread"] = {str(imb): spread(ALPHA_SWEEP, imb) for imb in imbalances}
        verdict["robust_to_rho"] = all(v <= MARGIN for v in verdict["rho_spread"].values())
        verdict["more_robust_than_reference_cg_alpha"] = sum(
            verdict["rho_spread"][str(imb)] < verdict["alpha_spread"][str(imb)] for imb in imbalances) >= 2
    checked = [r for r in runs if r["setup"] == setup and r["failed"] is None and r["arm"] != "none"]
    verdict["grad_norm_ratio_median"] = statistics.median(r["grad_norms"][-1] / r["grad_norm_init"] for r in checked)
    verdict["distance_ratio_median"] = statistics.median(r["distance_ratio"] for r in checked)
    verdict["premise_met"] = verdict["distance_ratio_median"] <= 0.1
    return {"table": rows, "comparisons": comparisons, "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="imbalance 100, seeds 0-1, 5 outer steps")
    parser.add_argument("--setup", choices=list(SETUPS), default="main")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--imbalances", default="200,100,50", help="comma-separated (the rule is stated for all three)")
    parser.add_argument("--summarise", action="store_true", help="table the recorded runs, run nothing")
    args = parser.parse_args()
    setups = [args.setup]
    imbalances = [100.0] if args.quick else [float(v) for v in args.imbalances.split(",")]
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    outer_steps = 5 if args.quick else 20
    # seed-major order: an interrupted run leaves whole seeds, which pair across arms
    jobs = [{"setup": s, "arm": arm, "imbalance": imb, "seed": seed, "outer_steps": outer_steps}
            for s in setups for seed in seeds for imb in imbalances for arm in SETUPS[s][3]]
    out = Path(__file__).parent / "results" / f"hpo_paper_{args.setup}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".runs.jsonl")
    key = lambda r: (r["setup"], r["arm"], r["imbalance"], r["seed"], r["outer_steps"])  # noqa: E731
    recorded = {key(r): r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    todo = [] if args.summarise else [j for j in jobs if key(j) not in recorded]
    load_before, start = os.getloadavg(), time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool, log.open("a") as sink:
        for run in pool.map(one_run, todo):
            recorded[key(run)] = run
            sink.write(json.dumps(run) + "\n")
            sink.flush()
    wall, load_after = time.perf_counter() - start, os.getloadavg()
    runs = [recorded[key(j)] for j in jobs if key(j) in recorded]
    seeds = [seed for seed in seeds if all(key(j) in recorded for j in jobs if j["seed"] == seed)]
    if len(seeds) < 2:
        raise SystemExit(f"only {len(seeds)} complete seed(s) recorded in {log}: nothing to pair")
    runs = [r for r in runs if r["seed"] in seeds]
    results = {s: summarise(runs, s, imbalances, seeds) for s in setups}

    meta = {"imbalances": imbalances, "seeds": seeds, "outer_steps": outer_steps, "workers": args.workers,
            "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
            "wall_seconds": wall}
    out.write_text(json.dumps({**meta, "results": results, "runs": runs}, indent=1))

    print(f"{len(todo)} runs in {wall:.0f} s on {args.workers} workers (load average before {load_before}, after "
          f"{load_after}); tabled: {len(runs)} runs, seeds {seeds}")
    for s, res in results.items():
        per, reset, unroll, _ = SETUPS[s]
        print(f"\n== {s}: per {per}, θ reset {reset}, {outer_steps} outer x {unroll} inner steps, Adam outer lr 0.1")
        print(f"{'imb':>5} {'arm':<22} {'test acc':>15} {'val loss':>9} {'|grad f| init/1st/last':>23} {'dist':>5} "
              f"{'lambda_max est [range] /dense':>30} {'hg CPU s':>8} {'skip':>4} {'fail':>4}")
        for t in res["table"]:
            lam = "" if t["lambda_max_mean"] is None else (
                f"{t['lambda_max_mean']:.3g} [{t['lambda_max_range'][0]:.2g},{t['lambda_max_range'][1]:.2g}] "
                f"/{t['lambda_max_last_over_dense']:.3f}")
            print(f"{t['imbalance']:>5g} {t['arm']:<22} {t['test_acc_mean']:>8.3f} ± {t['test_acc_std']:.3f} "
                  f"{t['val_loss_mean']:>9.4f} {t['grad_norm_init']:>8.3f}/{t['grad_norm_first']:.3f}/{t['grad_norm_last']:.3f} "
                  f"{t['distance_ratio']:>5.2f} {lam:>30} {t['hypergrad_cpu_seconds_mean']:>8.2f} {t['skipped_steps']:>4} {t['failed']:>4}")
        dense = [v for t in res["table"] if t["lambda_max_dense_range"] for v in t["lambda_max_dense_range"]]
        print(f"dense-Hessian λ_max at the last hypergradient points: {min(dense):.3g} .. {max(dense):.3g}; "
              "dist = median ‖θ_T − θ*‖ / ‖θ_0 − θ*‖")
        print("paired test-accuracy differences, mean [95% t-interval] (wins/n):")
        for name, c in res["comparisons"].items():
            cells = "  ".join(f"{k}: {v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] ({v['wins']}/{v['n']}) {v['label']}"
                              for k, v in c.items() if k != "arms")
            print(f"  {name} {c['arms']:<40} {cells}")
        print(f"verdict: {json.dumps(res['verdict'])}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
