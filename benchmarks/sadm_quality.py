"""SADM fine-tuning study (issue 12): does a structure term improve a trained plain denoiser?

Pre-registered protocol and decision rule (written 2026-11-25 13:45 UTC, before any arm was run).

Base. Per seed s in {0, 1, 2}: plain denoising training (`sadm_lambda = 0`) of the unconditional
tiny U-Net on the built-in 8x8 digits for BASE_STEPS = 1200 steps, batch 64, with
`raygen.diffusion.train.train_func`. At lambda = 0 the current-form discriminator is still trained
alongside, so the base checkpoint also holds "the lambda = 0 run's trained discriminator" (used by
benchmarks/sadm_diagnosis.py and carried into the current-SADM arm).

Arms. Every arm fine-tunes its seed's base checkpoint for N = 100 steps (amended from 300 to 200 at
14:04 UTC after the --quick smoke run's timings, and to 100 at 14:16 UTC when the first full arms
got ~5 % of a core on the overloaded machine (load ~45), before any full arm finished): denoiser, EMA and Adam
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
for every arm of a seed; SAMPLES = 500 samples (1000 before the 14:16 amendment); features of
`digits_reference(torch.Generator().manual_seed(0), steps=400)`;
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
is 1200 steps, not "converged"; fine-tuning is 100 steps; 500 samples instead of 2000; arms
dropped: ratio 0.03 (the smallest effect, least informative), the ungated variant (the diagnosis
already measures the sigma floor), the distribution-level MMD variant (built and tested in
raygen/diffusion/structure.py, but each step costs several extra sampler passes), the instance-level adversarial baseline, and best-vs-scratch;
equal wall-clock replaced by equal denoiser rows.

    python benchmarks/sadm_quality.py            # the study above
    python benchmarks/sadm_quality.py --quick    # smoke run: 60 + 20 steps, 2 seeds, 200 samples

Converged-base study (issue 28): the plan, pre-registered 2026-12-05 00:05 UTC; NOT run.
Protocol (`--converged`): as above, with these changes. Base: B plain steps, where B is the shortest
length at which the base is converged, measured first on seed 0 by `--stage converge` (one plain run
extended to 600, 1200, 2400, 4800, 9600 steps; each base's EMA scored with two initial-noise draws;
converged at B when FD(2B) − FD(B) under the same noise lies within the sampler's resampling noise,
the mean over the scored bases of |FD(draw a) − FD(draw b)|; the `--converged` run reads B from
results/sadm_converge_seed0.json and stops if none is converged). Fine-tuning N = 1000 steps, 5 seeds,
1000 samples per FD. Every arm with an adversary (current, gated-0.1, gated-0.3, mmd-0.3) first
trains its critic alone for 200 steps against the base denoiser (critic warm-up before λ > 0; the
denoiser, EMA and noise stream untouched). Arms: those above plus mmd-0.3 (distribution-level:
4-step Euler sampler 5 → 0.05 from the structure stream's noise, the last step D(x, 0.05) with
gradients, MMD² with a sum of Gaussian kernels on the spectral-norm encoder's embeddings, the encoder
maximising it; λ adaptive at gradient ratio 0.3 as the gated arms). Logged every N/10 steps: the
evaluated EMA's output movement from the base EMA, RMS of ΔD(x_σ, σ) on a fixed probe of 64 digits
at σ ∈ {0.05, 0.2, 0.5, 1, 2}: an arm whose FD does not differ from plain@N and whose movement is far
below plain@N's is "no dose", not "no effect". Decision rule: as above (a)-(c) over the 5 seeds (t
with 4 degrees of freedom), against plain@N and against plain@2N (equal denoiser rows).

    python benchmarks/sadm_quality.py --converged --stage converge --seed 0   # B, ~0.8 core-hours
    python benchmarks/sadm_quality.py --converged --stage base                # bases of seeds 1-4
    python benchmarks/sadm_quality.py --converged --stage seed --seed S       # per seed, in parallel
    python benchmarks/sadm_quality.py --converged --stage report

Measured cost (`--quick --stage cost --arms all --steps 20 --critic-warmup 20`, 2026-12-04
23:43-00:03 UTC, results/sadm_cost.json): single-thread CPU seconds per step, on the shared 2-core
machine at load average 19-37 (a quiet core is likely faster; wall time was 10-14x these):
base training (plain + the λ = 0 discriminator) 0.265; fine-tuning plain 0.235, current 0.300,
gated-0.1 0.530, gated-0.3 0.555, frozen-0.3 0.502, mmd-0.3 0.721; critic warm-up current 0.103,
gated 0.110-0.125, mmd 0.352; FD of 1000 Heun samples ~32 (sampling; 6.4 s per 200 samples).
Per seed without its base: plain@2N 2000 steps 470 s, current 321 s, gated 552 + 580 s, frozen 502 s,
mmd 791 s, 8 FD scores 256 s: ~3,500 s, ~1.0 core-hour; 5 seeds ~4.8 core-hours. Bases: 0.265 s x B
per seed, 5 seeds: 1.8 core-hours at B = 4800, 3.5 at B = 9600; `--stage converge` (seed 0's base
run to 9600 plus 10 FD scores) ~0.8 of those. Total ~6.6-8.3 core-hours of this machine's CPU time;
seeds are independent processes (`--stage seed`), so ~1.5 h wall on 5 free cores. GPU: not
estimated (no accelerator was available to measure on); at 8x8 images and batch 64 the step is
launch-bound, so a GPU's gain per step cannot be inferred from CPU figures.
Convergence not measured: `--stage converge` ran 11 minutes at load 18-24 (the FD classifier first) and reached step 60 of
600 (about 7 % of a core), so it was stopped. What is known: seed 0's plain FD fell 6.48 -> 4.08
between 1300 and 2200 total steps (issue 28's review), 4x the resampling noise of the 100-step study
(0.56): the 1200-step bases were not converged, and B >= 2400.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from benchlib import RESULTS, write

from raygen.diffusion import EMA, DenoisingLoss, StructureEncoder, heun_sample
from raygen.diffusion.sadm import discriminator_loss
from raygen.diffusion.structure import (SpectralEncoder, adaptive_lambda, few_step_sample, gated_structure_term,
                                        js_critic_loss, mmd_critic_loss, mmd_structure_term, structure_noise)
from raygen.diffusion.train import SADMStep, _digit_batches, sadm_step, train_func
from raygen.metrics import digits_reference, frechet_distance, extract_features, sample_quality
from raygen.models import load_denoiser
from raygen.train_loop import TrainState, _read_checkpoint, seeded

BASE_STEPS, STEPS, SAMPLES, SEEDS = 1200, 100, 500, 3
METRICS = ("fd", "kid", "precision", "recall")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # t_{0.975, df}


@dataclass(frozen=True)
class Arm:
    name: str
    form: str = "plain"  # plain | current | gated
    ratio: float = 0.0  # gated: structure / denoise gradient ratio at the output layer
    frozen: bool = False  # gated: encoder stays at its random init
    lam: float = 0.0  # current: fixed lambda


ARMS = (Arm("plain"), Arm("current", "current", lam=0.1), Arm("gated-0.1", "gated", 0.1),
        Arm("gated-0.3", "gated", 0.3), Arm("frozen-0.3", "gated", 0.3, frozen=True))
MMD_ARM = Arm("mmd-0.3", "mmd", 0.3)  # distribution-level form (issue 28's study; not in the 100-step study)
ALL_ARMS = {a.name: a for a in (*ARMS, MMD_ARM)}
MMD_SIGMAS = (5.0, 1.0, 0.2, 0.05)  # the MMD arm's few-step sampler: Euler to 0.05, then D(x, 0.05) with gradients
PROBE_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0)  # output movement is measured at these noise levels


def probe(seed: int, sigma_data: float) -> list[tuple[float, torch.Tensor]]:
    """A fixed probe set: 64 digits of the seed's first batch noised at each PROBE_SIGMAS level."""
    x0, _ = next(_digit_batches(seed, 64, 0))
    g = torch.Generator().manual_seed(50_000 + seed)
    return [(s, x0 + s * torch.randn(x0.shape, generator=g)) for s in PROBE_SIGMAS]


@torch.no_grad()
def outputs(model, probes) -> list[torch.Tensor]:
    return [model(x, torch.full((x.shape[0],), s), None) for s, x in probes]


def movement(model, probes, before: list[torch.Tensor]) -> dict[str, float]:
    """RMS change of D(x_sigma, sigma) from `before` (the base EMA's outputs), per probe sigma."""
    return {f"move_{s:g}": float((o - b).pow(2).mean().sqrt()) for (s, _), o, b in zip(probes, outputs(model, probes), before)}


def train_base(seed: int, steps: int, root: Path) -> Path:
    """The seed's plain base run (discriminator trained alongside); returns its checkpoint directory.
    A longer base extends (resumes) a shorter one of the same seed, bit for bit the uninterrupted run;
    every checkpoint made is kept, so bases of several lengths share one run."""
    name = f"base_seed{seed}"
    ckpt = root / name / f"checkpoint_{steps:06d}"
    if not ckpt.exists():
        train_func(dict(name=name, storage_path=str(root), steps=steps, batch_size=64, sadm_lambda=0.0,
                        sample_every=0, log_every=max(steps // 10, 1), checkpoint_every=steps, seed=seed,
                        keep_checkpoints=100))
    return ckpt


def restore(ckpt: Path, seed: int) -> TrainState:
    """The base run's full state: denoiser, its EMA and Adam state, the current-form discriminator and
    its optimiser, the denoising generator (continued, so every arm sees the same noise)."""
    saved = _read_checkpoint(ckpt, 0)
    denoiser = load_denoiser(ckpt).train()
    encoder = StructureEncoder(1, embed_dim=64)
    state = TrainState(modules={"denoiser": denoiser, "encoder": encoder},
                       optimizers={"opt": torch.optim.Adam(denoiser.parameters(), lr=2e-4),
                                   "opt_phi": torch.optim.Adam(encoder.parameters(), lr=2e-4, betas=(0.5, 0.999))},
                       emas={"denoiser": EMA(denoiser, 0.999)}, generator=torch.Generator())
    state.load_state_dict(saved)
    return state


def finetune(arm: Arm, ckpt: Path, seed: int, base_steps: int, steps: int, snapshots: tuple[int, ...],
             critic_warmup: int = 0, log_every: int = 10):
    """Fine-tune from the base for `steps`; returns ({step: EMA model copy}, per-step logs).

    `critic_warmup` W > 0: before the first fine-tuning step, arms with an adversary (current,
    gated with a trained encoder, mmd) train their critic alone for W steps against the base
    denoiser's outputs (the denoiser, its EMA and the denoising noise stream untouched; the critic
    sees the structure stream's batches of fine-tuning steps 1..W). Every `log_every` steps the
    logs carry the evaluated EMA's output movement from the base EMA on a fixed probe set
    (`movement`): "no effect" can then be told from "no dose"."""
    from accelerate import Accelerator

    state = restore(ckpt, seed)
    model, opt, ema = state.modules["denoiser"], state.optimizers["opt"], state.emas["denoiser"]
    loss_fn = DenoisingLoss()
    batches = _digit_batches(seed, 64, base_steps)
    current = SADMStep(Accelerator(cpu=True), loss_fn, grad_clip=1.0)
    probes = probe(seed, loss_fn.sigma_data)
    before = outputs(ema.model, probes)  # EMA models are always in eval mode
    if arm.form in ("gated", "mmd"):
        enc = seeded(seed + 2, lambda: SpectralEncoder(1, embed_dim=64))
        opt_enc = torch.optim.Adam(enc.parameters(), lr=2e-4, betas=(0.5, 0.999))

        def critic(x0, x_hat):
            opt_enc.zero_grad(set_to_none=True)
            (mmd_critic_loss if arm.form == "mmd" else js_critic_loss)(enc, x0, x_hat).backward()
            opt_enc.step()

    def mmd_generate(x0, step):  # few-step samples from the structure stream's noise; the last step with gradients
        _, eps = structure_noise((seed, 4, step), 0, x0.shape, 0.02, loss_fn.sigma_data)
        x = few_step_sample(model, 0.5 + MMD_SIGMAS[0] * eps, list(MMD_SIGMAS))
        return model(x, torch.full((x0.shape[0],), MMD_SIGMAS[-1]), None)

    adversary = arm.form in ("current", "mmd") or (arm.form == "gated" and not arm.frozen)
    warm = _digit_batches(seed, 64, base_steps)
    warm_gen = torch.Generator().manual_seed(60_000 + seed)  # current form's warm-up noise: not the denoising stream
    c0 = time.process_time()
    for i in range(1, (critic_warmup if adversary else 0) + 1):
        x0, _ = next(warm)
        step = base_steps + i
        with torch.no_grad():
            if arm.form == "current":
                x_hat = loss_fn(model, x0, warm_gen)[1]
            elif arm.form == "mmd":
                x_hat = mmd_generate(x0, step)
            else:
                sigma, eps = structure_noise((seed, 3, step), 0, x0.shape, 0.02, loss_fn.sigma_data)
                x_hat = model(x0 + sigma * eps, torch.full((x0.shape[0],), sigma), None)
        if arm.form == "current":
            state.optimizers["opt_phi"].zero_grad(set_to_none=True)
            discriminator_loss(state.modules["encoder"], x0, x_hat).backward()
            state.optimizers["opt_phi"].step()
        else:
            critic(x0, x_hat)
    warmup_cpu_s, c0, t0 = time.process_time() - c0, time.process_time(), time.perf_counter()

    out, logs = {}, []
    for i in range(1, steps + 1):
        x0, _ = next(batches)
        step = base_steps + i
        if arm.form == "current":
            m = sadm_step(current, state, x0, None, arm.lam)
            row = {"structure_distance": float(m["structure_distance"]), "lambda_t": arm.lam}
        else:
            loss, _ = loss_fn(model, x0, state.generator)
            row = {}
            if arm.form == "gated":
                sigma, eps = structure_noise((seed, 3, step), 0, x0.shape, 0.02, loss_fn.sigma_data)
                term, row = gated_structure_term(model, enc, x0, None, loss, model.net.out.weight, sigma=sigma,
                                                 eps=eps, sigma_data=loss_fn.sigma_data, ratio=arm.ratio,
                                                 critic=None if arm.frozen else critic)
                loss = loss + term
            elif arm.form == "mmd":
                x_gen = mmd_generate(x0, step)
                critic(x0, x_gen.detach())
                d = mmd_structure_term(enc, x0, x_gen)
                lam = adaptive_lambda(loss, d, model.net.out.weight, arm.ratio)
                loss = loss + lam * d
                row = {"structure_mmd": float(d.detach()), "lambda_t": float(lam)}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model)
        if i % log_every == 0 or i in snapshots:
            logs.append({"step": i, **row, **movement(ema.model, probes, before)})
        if i in snapshots:
            out[i] = EMA(ema.model).model  # a frozen copy of the EMA weights
    logs.append({"critic_warmup_steps": critic_warmup if adversary else 0, "critic_warmup_cpu_s": warmup_cpu_s,
                 "finetune_cpu_s": time.process_time() - c0, "finetune_wall_s": time.perf_counter() - t0})
    return out, logs


def score(model, seed: int, noise_seed: int, n: int, classifier, real) -> dict:
    fake = heun_sample(model.eval(), (n, 1, 8, 8), torch.Generator().manual_seed(noise_seed)).clamp(0, 1)
    return sample_quality(classifier, real, fake, generator=torch.Generator().manual_seed(seed))


def run_seed(seed: int, ckpt: Path, base_steps: int, steps: int, n: int, classifier, real, arms=ARMS,
             critic_warmup: int = 0) -> dict:
    """Every arm of one seed: {arm: metrics}, plus the sampler's resampling noise and training logs."""
    res, logs = {}, {}
    for arm in arms:
        t0 = time.perf_counter()
        snaps = (steps, 2 * steps) if arm.form == "plain" else (steps,)
        models, logs[arm.name] = finetune(arm, ckpt, seed, base_steps, snaps[-1], snaps, critic_warmup,
                                          log_every=max(steps // 10, 1))
        train_s = time.perf_counter() - t0
        moved = {row["step"]: {k: v for k, v in row.items() if k.startswith("move_")}
                 for row in logs[arm.name] if "step" in row}
        res[arm.name] = {**score(models[steps], seed, 10_000 + seed, n, classifier, real), "train_s": train_s,
                         "movement": moved[steps]}
        if arm.form == "plain":
            res["plain@2N"] = {**score(models[2 * steps], seed, 10_000 + seed, n, classifier, real), "train_s": train_s,
                               "movement": moved[2 * steps]}
            res["plain_resampled"] = score(models[steps], seed, 20_000 + seed, n, classifier, real)
        print(f"seed {seed} {arm.name}: fd {res[arm.name]['fd']:.3f}  ({train_s:.0f} s)", flush=True)
    return {"results": res, "logs": logs}


def paired(xs: list[float], ys: list[float]) -> dict:
    """Mean paired difference x - y over seeds with its 95 % t-interval."""
    d = [x - y for x, y in zip(xs, ys)]
    mean = statistics.mean(d)
    half = T975[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def decide(per_seed: list[dict], arm: str, control: str) -> dict:
    """The pre-registered rule (module docstring) for arm vs control."""
    get = lambda a, k: [r[a][k] for r in per_seed]  # noqa: E731
    dfd, dkid = paired(get(arm, "fd"), get(control, "fd")), paired(get(arm, "kid"), get(control, "kid"))
    recall_ok = statistics.mean(get(arm, "recall")) >= statistics.mean(get(control, "recall")) - statistics.stdev(get(control, "recall"))
    return {"dfd": dfd, "dkid": dkid, "recall_ok": recall_ok,
            "improves": dfd["hi"] < 0 and dkid["mean"] < 0 and recall_ok}


def report(per_seed: list[dict], floor: float, meta: dict) -> dict:
    arms = ["plain", "plain@2N", *[a for a in meta["arm_names"] if a != "plain"]]
    summary = {a: {k: {"mean": statistics.mean(r[a][k] for r in per_seed), "std": statistics.stdev(r[a][k] for r in per_seed)}
                   for k in (*METRICS, "train_s")} for a in arms}
    resampling = [abs(r["plain_resampled"]["fd"] - r["plain"]["fd"]) for r in per_seed]
    decisions = {a: {"vs_plain": decide(per_seed, a, "plain"), "vs_plain@2N": decide(per_seed, a, "plain@2N")}
                 for a in arms[1:]}
    print(f"{meta['steps']} fine-tune steps from {meta['base_steps']}-step plain bases, seeds {meta['seeds']}, "
          f"{meta['samples']} samples; mean +- std over seeds")
    print(f"real-vs-real FD floor {floor:.3f}; sampler resampling |dFD| {statistics.mean(resampling):.3f}")
    print(f"{'arm':<12}" + "".join(f"{k:>18}" for k in METRICS) + f"{'dFD vs plain [95% CI]':>30}{'vs plain@2N':>26}  improves")
    for a in arms:
        s = summary[a]
        line = f"{a:<12}" + "".join(f"{s[k]['mean']:>10.4f} +- {s[k]['std']:<5.3f}" for k in METRICS)
        if a in decisions:
            d1, d2 = decisions[a]["vs_plain"], decisions[a]["vs_plain@2N"]
            line += f"{d1['dfd']['mean']:>+10.3f} [{d1['dfd']['lo']:+.3f}, {d1['dfd']['hi']:+.3f}]"
            line += f"{d2['dfd']['mean']:>+8.3f} [{d2['dfd']['lo']:+.3f}, {d2['dfd']['hi']:+.3f}]"
            line += f"  {d1['improves']}/{d2['improves']}"
        print(line)
    if all("movement" in r[a] for r in per_seed for a in arms):  # runs before issue 28 did not log it
        print("output movement from the base EMA at the evaluated step, RMS of dD(x_sigma, sigma), mean over seeds:")
        for a in arms:
            keys = list(per_seed[0][a]["movement"])
            print(f"{a:<12}" + "  ".join(f"{k[5:]}: {statistics.mean(r[a]['movement'][k] for r in per_seed):.4f}"
                                         for k in keys))
    return {**meta, "real_floor_fd": floor, "resampling_abs_dfd": resampling, "summary": summary,
            "decisions": decisions}


def plot_logs(per_seed: list[dict], path: Path, arms=ARMS) -> None:
    """d and lambda over fine-tuning (mean over seeds): the structure arms' training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for arm in [a for a in arms if a.form != "plain"]:
        key = {"current": "structure_distance", "gated": "structure_js", "mmd": "structure_mmd"}[arm.form]
        rows = [[row for row in r["logs"][arm.name] if "step" in row] for r in per_seed]
        steps = [row["step"] for row in rows[0]]
        for ax, k in ((axes[0], key), (axes[1], "lambda_t")):
            ax.plot(steps, [statistics.mean(r[i][k] for r in rows) for i in range(len(steps))], label=arm.name)
    axes[0].set_ylabel("d (current: sq. cosine diff.; gated: JS)")
    axes[1].set_ylabel("lambda (gated: adaptive)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("fine-tuning step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def converge(seed: int, root: Path, first: int, last: int, n: int, classifier, real) -> dict:
    """Is the plain base converged? Bases of first, 2·first, 4·first, ... <= last steps (one run,
    extended); each base's EMA scored with two initial-noise draws (a: 10_000 + seed, b: 20_000 +
    seed). Converged at B when FD_a(2B) − FD_a(B) (same noise, paired) lies within the resampling
    noise, the mean over the scored bases of |FD_a − FD_b|."""
    rows, b = [], first
    path = RESULTS / f"sadm_converge_seed{seed}.json"
    while b <= last:
        load, t0, c0 = os.getloadavg(), time.perf_counter(), time.process_time()
        ckpt = train_base(seed, b, root)
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        model = restore(ckpt, seed).emas["denoiser"].model
        t1 = time.perf_counter()
        fd_a = score(model, seed, 10_000 + seed, n, classifier, real)["fd"]
        fd_b = score(model, seed, 20_000 + seed, n, classifier, real)["fd"]
        rows.append({"base_steps": b, "fd_a": fd_a, "fd_b": fd_b, "train_s": train_s, "train_cpu_s": train_cpu_s,
                     "score_s_per_draw": (time.perf_counter() - t1) / 2, "load_average": load})
        noise = statistics.mean(abs(r["fd_a"] - r["fd_b"]) for r in rows)
        for r, r2 in zip(rows, rows[1:]):
            r["fd_2B_minus_B"] = r2["fd_a"] - r["fd_a"]
            r["within_noise"] = abs(r["fd_2B_minus_B"]) <= noise
        print(f"base {b}: FD {fd_a:.3f} / {fd_b:.3f} (two noise draws), trained in {train_s:.0f} s, "
              f"load {load[0]:.1f}; resampling noise so far {noise:.3f}", flush=True)
        write(path.stem, {"seed": seed, "samples": n, "resampling_abs_dfd": noise, "rows": rows})
        b *= 2
    return {"rows": rows}


def cost(seed: int, root: Path, base_steps: int, k: int, warmup: int, arms) -> dict:
    """CPU seconds per step (this process, one thread; less load-dependent than wall time) of base
    training and of every arm's fine-tuning and critic warm-up, from k steps and `warmup` warm-up
    steps; wall seconds and the load average beside them (the machine is shared)."""
    out = {"load_average_before": os.getloadavg(), "threads": torch.get_num_threads(), "k": k, "warmup": warmup}
    t0 = time.perf_counter()
    ckpt = train_base(seed, base_steps, root)
    later = [c.name for c in ckpt.parent.glob("checkpoint_*") if int(c.name.split("_")[1]) > base_steps]
    if later:  # the extension below would resume from those and time fewer than k steps
        raise SystemExit(f"{ckpt.parent} already has {later}: time the cost in a fresh --workdir")
    c1, t1 = time.process_time(), time.perf_counter()
    train_base(seed, base_steps + k, root)  # k more base steps (extends the run; includes one checkpoint save)
    out["base"] = {"cpu_s_per_step": (time.process_time() - c1) / k, "wall_s_per_step": (time.perf_counter() - t1) / k}
    for arm in arms:
        _, logs = finetune(arm, ckpt, seed, base_steps, k, (k,), warmup, log_every=k)
        w = logs[-1]
        out[arm.name] = {"cpu_s_per_step": w["finetune_cpu_s"] / k, "wall_s_per_step": w["finetune_wall_s"] / k,
                         "warmup_cpu_s_per_step": w["critic_warmup_cpu_s"] / max(w["critic_warmup_steps"], 1)}
        print(f"{arm.name}: {out[arm.name]['cpu_s_per_step']:.3f} CPU s/step ({out[arm.name]['wall_s_per_step']:.3f} wall), "
              f"critic warm-up {out[arm.name]['warmup_cpu_s_per_step']:.3f} CPU s/step (load {os.getloadavg()[0]:.1f})",
              flush=True)
    out.update(load_average_after=os.getloadavg(), wall_seconds=time.perf_counter() - t0)
    print(f"base: {out['base']['cpu_s_per_step']:.3f} CPU s/step ({out['base']['wall_s_per_step']:.3f} wall); "
          f"load {out['load_average_before']} -> {out['load_average_after']}")
    write("sadm_cost", out)
    return out


def converged_base(seed: int = 0) -> int:
    """The shortest base that `--stage converge` found converged (FD(2B) − FD(B) within the resampling
    noise) for `seed`; the converged study stops here if that has not been measured."""
    path = RESULTS / f"sadm_converge_seed{seed}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    done = [r["base_steps"] for r in rows if r.get("within_noise")]
    if not done:
        raise SystemExit(f"no converged base recorded in {path}: run `--converged --stage converge --base-steps 9600` "
                         "first (or pass --base-steps)")
    return done[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--converged", action="store_true",
                   help="issue 28's protocol: bases of the length --stage converge found converged, 1000 "
                        "fine-tuning steps, 5 seeds, "
                        "critic warm-up 200, every arm incl. mmd-0.3, 1000 samples")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "raygen_sadm_study"),
                   help="base checkpoints and per-seed results are kept here and reused")
    p.add_argument("--stage", choices=("base", "seed", "report", "all", "converge", "cost"), default="all",
                   help="seed: one seed's arms (--seed), so seeds can run as separate processes; converge: "
                        "FD of doubling bases (--seed, up to --base-steps); cost: seconds per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-steps", type=int, help=f"plain base length (default {BASE_STEPS})")
    p.add_argument("--steps", type=int, help=f"fine-tuning steps N (default {STEPS})")
    p.add_argument("--seeds", type=int, help=f"number of seeds (default {SEEDS})")
    p.add_argument("--samples", type=int, help=f"samples per FD (default {SAMPLES})")
    p.add_argument("--critic-warmup", type=int, help="critic-only steps before lambda > 0 (default 0)")
    p.add_argument("--arms", help="comma-separated arm names (default: the 100-step study's; "
                                  f"all: {','.join(ALL_ARMS)})")
    p.add_argument("--first", type=int, default=600, help="converge: the shortest base")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)  # a fresh checkout has no results/: fail now, not after the whole run
    if args.quick:
        base_steps, steps, n, n_seeds, warmup, arm_names = 60, 20, 200, 2, 0, [a.name for a in ARMS]
    elif args.converged:
        base_steps, steps, n, n_seeds, warmup, arm_names = None, 1000, 1000, 5, 200, list(ALL_ARMS)
    else:
        base_steps, steps, n, n_seeds, warmup, arm_names = BASE_STEPS, STEPS, SAMPLES, SEEDS, 0, [a.name for a in ARMS]
    if args.base_steps:
        base_steps = args.base_steps
    elif base_steps is None:  # converge: the longest base tried; cost: the shortest
        base_steps = {"converge": 9600, "cost": args.first}.get(args.stage) or converged_base()
    steps, n, n_seeds = args.steps or steps, args.samples or n, args.seeds or n_seeds
    warmup = warmup if args.critic_warmup is None else args.critic_warmup
    arm_names = arm_names if not args.arms else list(ALL_ARMS) if args.arms == "all" else args.arms.split(",")
    if "plain" not in arm_names:
        arm_names = ["plain", *arm_names]  # the controls are always run
    arms = [ALL_ARMS[a] for a in arm_names]
    seeds = list(range(n_seeds))
    tag = "quick" if args.quick else "converged" if args.converged else "full"
    root = Path(args.workdir) / tag
    if args.stage == "cost":
        cost(args.seed, root, base_steps, args.steps or 20, warmup or 20, arms)
        return
    if args.stage in ("base", "all"):
        for s in seeds:
            print(f"base seed {s}: {train_base(s, base_steps, root)}", flush=True)
    if args.stage == "base":
        return
    classifier, real = digits_reference(torch.Generator().manual_seed(0), steps=150 if args.quick else 400)
    if args.stage == "converge":
        converge(args.seed, root, args.first, base_steps, n, classifier, real)
        return
    for s in ([args.seed] if args.stage == "seed" else seeds if args.stage == "all" else []):
        result = run_seed(s, train_base(s, base_steps, root), base_steps, steps, n, classifier, real, arms, warmup)
        (root / f"seed{s}.json").write_text(json.dumps(result))
    if args.stage == "seed":
        return
    per_seed = [json.loads((root / f"seed{s}.json").read_text()) for s in seeds]
    halves = torch.randperm(len(real), generator=torch.Generator().manual_seed(0)).chunk(2)
    floor = frechet_distance(*(extract_features(classifier, real[h]) for h in halves))
    meta = {"base_steps": base_steps, "steps": steps, "seeds": seeds, "samples": n, "quick": args.quick,
            "critic_warmup": warmup, "sampler": "heun 18 steps", "arms": [a.__dict__ for a in arms], "arm_names": arm_names}
    out = report([r["results"] for r in per_seed], floor, meta)
    out["runs"] = per_seed
    path = write(f"sadm_quality{'_quick' if args.quick else '_converged' if args.converged else ''}", out)
    plot_logs(per_seed, path.with_suffix(".png"), arms)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
