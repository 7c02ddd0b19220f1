"""MMDGS (diag, iso) vs annealed Langevin vs Tweedie on a trained digits denoiser, equal score evaluations.

All chains start from the same per-seed noise N(0.5, sigma_max^2) and anneal over the same
geometric sigma schedule (levels x steps_per_level score evaluations per sample); MMDGS-diag also
makes one Hessian-vector product per step (counted separately). Samples are scored against the
real digits in the features of raygen's own digits classifier (Fréchet distance, KID,
precision/recall). The EDM Heun ODE sampler (35 evaluations) is listed for reference.
Writes benchmarks/results/sampler_on_model.json and prints a table.

    python benchmarks/sampler_on_model.py --checkpoint runs/train_sadm_digits/checkpoint_000800
    python benchmarks/sampler_on_model.py --quick    # trains a 100-step model first (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from raygen.diffusion import heun_sample
from raygen.diffusion.train import train_func
from raygen.metrics import digits_reference, sample_quality
from raygen.models import load_denoiser
from raygen.sampling import annealed_langevin, initial_state, mmdgs, tweedie


def latest_checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.glob("checkpoint_*"))
    if not found:
        raise SystemExit(f"no checkpoint under {run_dir}: run `raygen run jobs/train_sadm_digits.yaml` "
                         "or pass --checkpoint / --quick")
    return found[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--steps-per-level", type=int, default=3)
    p.add_argument("--sigma-max", type=float, default=1.0)
    p.add_argument("--sigma-min", type=float, default=0.05)
    p.add_argument("--langevin-step", type=float, default=None, help="step at the last level (default 0.2 sigma_min^2)")
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        train_func(dict(name="quick", storage_path=tmp.name, steps=100, batch_size=64, sample_every=0,
                        checkpoint_every=100, log_every=50, sadm_warmup=25))
        checkpoint = Path(tmp.name) / "quick" / "checkpoint_000100"
    else:
        checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path("runs/train_sadm_digits"))
    model = load_denoiser(checkpoint)
    n = 200 if args.quick else args.samples
    classifier, real = digits_reference(torch.Generator().manual_seed(0), steps=150 if args.quick else 400)
    sigmas = [args.sigma_max * (args.sigma_min / args.sigma_max) ** (i / (args.levels - 1)) for i in range(args.levels)]
    seeds = list(range(n))
    x_init = 0.5 + initial_state(seeds, (1, 8, 8), scale=args.sigma_max, dtype=torch.float32)
    step = args.langevin_step or 0.2 * args.sigma_min**2
    common = dict(steps_per_level=args.steps_per_level, seeds=seeds)
    samplers = {
        "mmdgs diag": lambda: mmdgs(model, x_init, sigmas, covariance="diag", probes=1, **common),
        "mmdgs iso": lambda: mmdgs(model, x_init, sigmas, covariance="iso", **common),
        "annealed langevin": lambda: annealed_langevin(model, x_init, sigmas, step_size=step, **common),
        "tweedie (mean only)": lambda: tweedie(model, x_init, sigmas, **common),
        "heun ODE (reference)": lambda: (heun_sample(model, (n, 1, 8, 8), torch.Generator().manual_seed(0),
                                                     sigma_max=5.0), {"score_evals": 35}),
    }
    results = {}
    for name, draw in samplers.items():
        t0 = time.perf_counter()
        x, info = draw()
        seconds = time.perf_counter() - t0
        x = x.clamp(0, 1).float()
        if not torch.isfinite(x).all():
            results[name] = {"error": "non-finite samples", **info}
            continue
        scores = sample_quality(classifier, real, x, generator=torch.Generator().manual_seed(0))
        results[name] = {**scores, "score_evals": info.get("score_evals"), "hvp_evals": info.get("hvp_evals", 0),
                         "seconds": seconds}
    out = {"checkpoint": str(checkpoint), "samples": n, "sigmas": sigmas, "steps_per_level": args.steps_per_level,
           "langevin_step": step, "quick": args.quick, "results": results}
    path = Path(__file__).parent / "results" / "sampler_on_model.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"{n} samples, {args.levels} levels x {args.steps_per_level} steps, sigma {args.sigma_max} -> {args.sigma_min}")
    print(f"{'sampler':<22}{'FD':>9}{'KID':>9}{'prec':>7}{'recall':>8}{'evals':>7}{'hvps':>6}{'sec':>7}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<22} {r['error']}")
            continue
        print(f"{name:<22}{r['fd']:>9.3f}{r['kid']:>9.3f}{r['precision']:>7.3f}{r['recall']:>8.3f}"
              f"{r['score_evals']:>7}{r['hvp_evals']:>6}{r['seconds']:>7.1f}")
    print(f"wrote {path}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
