"""SADM fine-tuning study (issue 12): does a structure term improve a trained plain denoiser?

Pre-registered protocol and decision rule (written 2026-11-25 13:45 UTC, before any arm was run).

Base. Per seed s in {0, 1, 2}: plain denoising training (`sadm_lambda = 0`) of the unconditional
tiny U-Net on the built-in 8x8 digits for BASE_STEPS = 1200 steps, batch 64, with
`raygen.diffusion.train.train_func`. At lambda = 0 the current-form discriminator is still trained
alongside, so the base checkpoint also holds "the lambda = 0 run's trained discriminator" (used by
benchmarks/sadm_diagnosis.py and carried into the current-SADM arm).

Arms. Every arm fine-tunes its seed's base checkpoint for N = 300 steps: denoiser, EMA and Adam
state carried, the same data order (the seed's digit stream continued at the base step) and the
same denoising noise (the base's generator continued; the structure batches draw from their own
per-step stream, so they do not shift the denoising noise).
    plain@N        plain denoising, N steps                          (the equal-steps control)
    plain@2N       plain denoising, 2N steps   (equal compute: the gated arms make two denoiser
                   forward/backward passes of 64 rows per step, so the compute unit is
                   denoiser rows, not wall-clock, which is meaningless on this shared machine)
    current        current SADM form: cosine affinities, squared difference, mixed sigma, fixed
                   lambda = 0.1 (no warm-up: the model is already trained), base discriminator
    gated-0.1      gated bounded form (`raygen.diffusion.structure`): one log-uniform sigma in
                   [0.02, sigma_data] per structure batch, c_skip(sigma) weight, spectral-norm
                   encoder with normalised embeddings, row-softmax (tau = 0.1) Jensen-Shannon,
                   adaptive lambda with structure/denoise gradient ratio 0.1 at the output layer
    gated-0.3      the same, ratio 0.3
    frozen-0.3     gated-0.3 with the encoder frozen at its random init (is the adversary needed?)

Evaluation. EMA weights; the deterministic Heun sampler (18 steps) with the same initial noise
for every arm of a seed; SAMPLES = 1000 samples; features of `digits_reference(seed=0, steps=400)`;
FD (primary), KID, improved precision/recall (k = 3). Reported beside them: the real-vs-real FD
floor (two disjoint random halves of the real digits) and the sampler's resampling noise (|FD
difference| of the plain@N model under two different initial-noise seeds).

Decision rule. Arm X "improves on plain" iff, over the 3 seeds,
    (a) the mean paired dFD = FD(X) - FD(plain@N) is < 0 and its 95 % t-interval
        (mean +- t_{0.975, 2} * sd / sqrt(3), t = 4.303) excludes 0,
    (b) the mean paired dKID is < 0, and
    (c) mean recall(X) >= mean recall(plain@N) - std over seeds of recall(plain@N).
It "improves at equal compute" iff (a)-(c) also hold against plain@2N. Defaults: if a gated arm
improves at equal compute, it becomes the default SADM form of `raygen train` and the quickstart;
otherwise the quickstart trains plain (sadm_lambda = 0), SADM stays an option, and no improvement
is claimed. With n = 3 the interval is wide: only an effect consistent across seeds can pass.

Cut from the issue's study, and why: the machine is 2 CPU cores shared by ~6 engineers (a step
takes ~0.25-0.5 s) and the session has about an hour of compute, so: 3 seeds instead of 5; the base
is 1200 steps, not "converged"; 1000 samples instead of 2000; arms dropped: ratio 0.03 (the smallest
effect, least informative), the ungated variant (the diagnosis already measures the sigma floor),
the distribution-level MMD variant (built and tested in raygen/diffusion/structure.py, but each step
costs several extra sampler passes), the instance-level adversarial baseline, and best-vs-scratch;
equal wall-clock replaced by equal denoiser rows.

    python benchmarks/sadm_quality.py            # the study above
    python benchmarks/sadm_quality.py --quick    # smoke run: 60 + 20 steps, 2 seeds, 200 samples
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from raygen.diffusion.train import train_func

BASE_STEPS, STEPS, SAMPLES, SEEDS = 1200, 300, 1000, 3


def train_base(seed: int, steps: int, root: Path) -> Path:
    """The seed's plain base run (discriminator trained alongside); returns its checkpoint directory."""
    name = f"base_seed{seed}"
    ckpt = root / name / f"checkpoint_{steps:06d}"
    if not ckpt.exists():
        train_func(dict(name=name, storage_path=str(root), steps=steps, batch_size=64, sadm_lambda=0.0,
                        sample_every=0, log_every=max(steps // 10, 1), checkpoint_every=steps, seed=seed))
    return ckpt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "raygen_sadm_study"),
                   help="base checkpoints are kept here and reused by later runs")
    p.add_argument("--stage", choices=("base", "all"), default="all")
    args = p.parse_args()
    base_steps = 60 if args.quick else BASE_STEPS
    seeds = range(2 if args.quick else SEEDS)
    root = Path(args.workdir) / ("quick" if args.quick else "full")
    for s in seeds:
        print(f"base seed {s}: {train_base(s, base_steps, root)}", flush=True)
    if args.stage == "base":
        return
    print(json.dumps({}))


if __name__ == "__main__":
    main()
