"""SADM (lambda > 0) vs plain denoising training (lambda = 0) on digits, same steps and seeds.

Each arm trains an unconditional tiny U-Net with `train_func` (plain process), draws samples from
the EMA weights with the same deterministic Heun sampler and initial noise, and is scored in the
features of a classifier raygen trains on the digits: Fréchet distance, KID, precision/recall.
Writes benchmarks/results/sadm_quality.json and prints mean +- std over seeds.

    python benchmarks/sadm_quality.py            # 600 steps, 3 seeds
    python benchmarks/sadm_quality.py --quick    # 60 steps, 2 seeds (smoke run, numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from raygen.diffusion import heun_sample
from raygen.diffusion.train import train_func
from raygen.metrics import digits_reference, sample_quality
from raygen.models import load_denoiser

METRICS = ("fd", "kid", "precision", "recall")


def train_and_score(lam: float, seed: int, steps: int, n_samples: int, classifier, real, root: Path) -> dict:
    name = f"lam{lam}_seed{seed}"
    t0 = time.perf_counter()
    train_func(dict(name=name, storage_path=str(root), steps=steps, batch_size=64, sadm_lambda=lam,
                    sadm_warmup=steps // 4, sample_every=0, log_every=max(steps // 10, 1), checkpoint_every=steps,
                    seed=seed))
    model = load_denoiser(root / name / f"checkpoint_{steps:06d}")
    fake = heun_sample(model, (n_samples, 1, 8, 8), torch.Generator().manual_seed(10_000 + seed)).clamp(0, 1)
    scores = sample_quality(classifier, real, fake, generator=torch.Generator().manual_seed(seed))
    last = json.loads((root / name / "metrics.jsonl").read_text().splitlines()[-1])
    return {**scores, "structure_distance": last["structure_distance"], "loss_denoise": last["loss_denoise"],
            "train_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--samples", type=int, default=1000)
    args = p.parse_args()
    steps = args.steps or (60 if args.quick else 600)
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    n_samples = 200 if args.quick else args.samples
    classifier, real = digits_reference(seed=0, steps=150 if args.quick else 400)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lam in (0.0, args.lam):
            runs[lam] = [train_and_score(lam, s, steps, n_samples, classifier, real, Path(tmp)) for s in seeds]
    summary = {}
    for lam, rs in runs.items():
        summary[f"lambda={lam}"] = {
            k: {"mean": statistics.mean(r[k] for r in rs), "std": statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0.0}
            for k in (*METRICS, "structure_distance", "loss_denoise", "train_s")}
    out = {"steps": steps, "seeds": seeds, "samples": n_samples, "quick": args.quick, "sampler": "heun 18 steps",
           "summary": summary, "runs": {f"lambda={k}": v for k, v in runs.items()}}
    path = Path(__file__).parent / "results" / "sadm_quality.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    keys = (*METRICS, "structure_distance", "train_s")
    print(f"{steps} steps, seeds {seeds}, {n_samples} samples (mean +- std)")
    print(f"{'arm':<14}" + "".join(f"{k:>22}" for k in keys))
    for arm, s in summary.items():
        print(f"{arm:<14}" + "".join(f"{s[k]['mean']:>13.4f} +- {s[k]['std']:<6.3f}" for k in keys))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
