"""IHVP accuracy and time at equal Hessian-vector-product budget: Nyström vs CG vs Neumann.

Every method solves the same damped system (H + rho·I) x = v — Nyström's rho is its damping, CG and
Neumann get the HVP u -> H·u + rho·u — and the error is ‖x − x*‖/‖x*‖ against a dense float64
solve. HVPs are float32 through torch.func. Problems:
  (a) ridge regression whose data matrix has singular values decaying as exp(-i/4), penalty 1e-4
      (a fast-decaying spectrum);
  (b) a 64-32-10 tanh MLP on digits trained for a few hundred steps with weight decay 1e-3
      (the Hessian of the training loss at those weights; it has small negative eigenvalues).
For budget k: Nyström rank k (its k products in one vmapped call), CG k iterations, Neumann k
iterations with alpha = 1/(lambda_max + rho) (its best safe step, from the dense eigenvalues).
Times: median over repeats of one IHVP, and of k sequential HVP calls (what Nyström's one
batched call replaces). One thread.

    .venv/bin/python benchmarks/ihvp.py [--quick]
writes benchmarks/results/ihvp.json (ihvp_quick.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import grad, jvp, vmap

from raygen.hypergrad.hypergradient import flatten, functional_module, unflatten
from raygen.hypergrad.solvers import SolverDivergence, cg_ihvp, neumann_ihvp, nystrom_ihvp


def hvp_of(loss, theta: torch.Tensor):
    g = grad(loss)
    return lambda u: jvp(g, (theta,), (u,))[1]


def ridge_problem(n: int, p: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, p, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    s = torch.exp(-torch.arange(p, dtype=torch.float64) / 4) * (n**0.5) * 3
    X = (U * s) @ V.T
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    lam = 1e-4
    X32, y32 = X.float(), y.float()
    loss = lambda w: ((X32 @ w - y32) ** 2).mean() / 2 + 0.5 * lam * (w**2).sum()
    H = X.T @ X / n + lam * torch.eye(p, dtype=torch.float64)
    return f"ridge, fast decay (p={p})", hvp_of(loss, torch.zeros(p)), H, [1e-2, 1e-1]


def mlp_problem(train_steps: int, seed: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for q in model.parameters():
            q.copy_(torch.randn(q.shape, generator=gen) / q.shape[-1] ** 0.5)
    params, apply = functional_module(model)
    wd = 1e-3

    def loss(theta_flat):
        theta = unflatten(theta_flat, params)
        return F.cross_entropy(apply(theta, x), y) + 0.5 * wd * (theta_flat**2).sum()

    theta = flatten(params).requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=0.5, momentum=0.9)
    for _ in range(train_steps):
        opt.zero_grad()
        loss(theta).backward()
        opt.step()
    theta = theta.detach()
    hvp = hvp_of(loss, theta)
    H = vmap(hvp, chunk_size=256)(torch.eye(len(theta))).double()
    return f"MLP on digits (p={len(theta)})", hvp, 0.5 * (H + H.T), [1e-2, 1e-1]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name, hvp, H, rhos, budgets, repeats, seed):
    p = len(H)
    v = torch.randn(p, generator=torch.Generator().manual_seed(seed + 1))
    evals = torch.linalg.eigvalsh(H)
    rows = []
    for rho in rhos:
        exact = torch.linalg.solve(H + rho * torch.eye(p, dtype=H.dtype), v.double())
        rel = lambda x: float(torch.linalg.vector_norm(x.double() - exact) / torch.linalg.vector_norm(exact))
        damped = lambda u, rho=rho: hvp(u) + rho * u
        alpha = 1 / (float(evals.max()) + rho)
        for k in budgets:
            sequential = median_time(lambda: [hvp(v) for _ in range(k)], repeats)
            methods = {
                "nystrom": lambda: nystrom_ihvp(hvp, v, rank=k, rho=rho, generator=torch.Generator().manual_seed(seed)),
                "cg": lambda: cg_ihvp(damped, v, iters=k, tol=0.0),
                "neumann": lambda: neumann_ihvp(damped, v, iters=k, alpha=alpha),
            }
            for method, fn in methods.items():
                try:
                    err = rel(fn())
                    seconds = median_time(fn, repeats)
                except SolverDivergence:
                    err, seconds = float("nan"), float("nan")
                rows.append({"problem": name, "rho": rho, "budget": k, "method": method, "rel_error": err,
                             "seconds": seconds, "k_sequential_hvp_seconds": sequential})
    spectrum = {"lambda_max": float(evals.max()), "lambda_min": float(evals.min()),
                "negative_eigenvalues": int((evals < 0).sum()), "p": p}
    return rows, spectrum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    budgets = [5, 20] if args.quick else [5, 10, 20, 50]
    repeats = 3 if args.quick else 7
    problems = [ridge_problem(n=400 if args.quick else 2000, p=100 if args.quick else 500, seed=args.seed),
                mlp_problem(train_steps=50 if args.quick else 300, seed=args.seed)]
    rows, spectra = [], {}
    for name, hvp, H, rhos in problems:
        r, spectra[name] = bench(name, hvp, H, rhos, budgets, repeats, args.seed)
        rows += r

    out = Path(__file__).parent / "results" / ("ihvp_quick.json" if args.quick else "ihvp.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": 1, "spectra": spectra, "rows": rows}, indent=1))
    for name, s in spectra.items():
        print(f"{name}: p={s['p']}, lambda in [{s['lambda_min']:.3g}, {s['lambda_max']:.3g}], "
              f"{s['negative_eigenvalues']} negative eigenvalues")
    print(f"{'problem':<28} {'rho':>5} {'k':>3} {'method':<8} {'rel err':>10} {'ms/IHVP':>9} {'ms k seq HVP':>13}")
    for r in rows:
        print(f"{r['problem'][:28]:<28} {r['rho']:>5g} {r['budget']:>3} {r['method']:<8} {r['rel_error']:>10.3g} "
              f"{1000 * r['seconds']:>9.2f} {1000 * r['k_sequential_hvp_seconds']:>13.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
