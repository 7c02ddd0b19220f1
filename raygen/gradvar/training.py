"""Variational training of an SBN with one gradient estimator, measuring its variance as it trains.

Setting of Tokui & Sato (ICML 2017, §6): RMSprop on both networks (θ with ∇_θ log p(x, z), φ with
the chosen estimator), weight decay, mini-batches of binarised digits drawn afresh each step. Every
`eval_every` iterations, at the current parameters: the per-element variance of the inference
gradient over `variance_batches` fresh mini-batches (mean over elements), and the validation ELBO.
At the end: validation ELBO and the importance-weighted test bound with K samples.

Every batch is drawn from (seed, sub-stream, iteration) and every example from its own seed, so a
run depends only on its spec.

Randomness: stream GRADVAR of `raygen.seeds` (id 19), a legacy stream (see its table), so that the
README's gradvar figures stay reproducible: its sub-streams keep the keys they had before the
named-stream rule, numpy SeedSequence([seed, sub, step]) for batches (`Sub.TRAIN` 0, `Sub.VARIANCE`
1, `Sub.EVAL` 2) and [seed, 3] for the data split (`Sub.SPLIT`); the SBN's weights torch
manual_seed(seed) (`Sub.SBN_INIT`), NVIL's baseline nets manual_seed(seed + 1) (`Sub.BASELINE_INIT`).
The trainer derives the generators (`gradvar_rng` / `gradvar_torch`); the algorithms in `sbn.py` /
`estimators.py` take them.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from raygen.errors import UserError
from raygen.gradvar.estimators import (MOVING_BASELINE, Baselines, baseline_loss, check_estimator, estimate,
                                       inference_gradient, make_baselines, update_baselines)
from raygen.gradvar.sbn import SBN, draw_batch, example_seeds, iw_bound, model_sizes
from raygen.gradvar.variance import welford
from raygen.seeds import Stream, numpy_rng, torch_generator



class Sub(enum.IntEnum):
    """Sub-streams of Stream.GRADVAR (legacy keys, see the module docs)."""

    TRAIN = 0
    VARIANCE = 1
    EVAL = 2
    SPLIT = 3
    SBN_INIT = 4
    BASELINE_INIT = 5


def gradvar_rng(seed: int, sub: Sub, *index: int) -> np.random.Generator:
    """Stream.GRADVAR, numpy: the legacy key [seed, sub, *index]."""
    return numpy_rng(seed, Stream.GRADVAR, sub, *index)


def gradvar_torch(seed: int, baseline_nets: bool = False) -> torch.Generator:
    """Stream.GRADVAR, torch: the legacy keys seed (the SBN) and seed + 1 (NVIL's baseline nets)."""
    return torch_generator(seed, Stream.GRADVAR, Sub.BASELINE_INIT if baseline_nets else Sub.SBN_INIT)


@dataclass(frozen=True)
class TrainSpec:
    model: str = "linear"
    units: int = 16
    estimator: str = "lr"
    lr: float = 1e-3
    seed: int = 0  # initialisation and every training / variance batch
    eval_seed: int = 0  # binarisation and latent noise of validation and test (shared by all runs)
    batch_size: int = 100
    iterations: int = 1000
    eval_every: int = 100
    variance_batches: int = 100
    weight_decay: float = 1e-3
    alpha: float = 0.8
    baseline_hidden: int = 100
    iw_samples: int = 50

    def check(self) -> None:
        model_sizes(self.model, self.units, 1)
        check_estimator(self.estimator)
        for key in ("batch_size", "iterations", "eval_every"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.variance_batches < 2:
            raise UserError(f"variance_batches must be >= 2 (a variance needs two samples), got {self.variance_batches}")
        if self.iw_samples < 1:
            raise UserError(f"iw_samples (K of the importance-weighted bound) must be >= 1, got {self.iw_samples}")
        if not self.lr > 0:
            raise UserError(f"lr must be > 0, got {self.lr}")


def build(spec: TrainSpec, train_pixels: Tensor) -> tuple[SBN, Baselines]:
    """The SBN and baselines on the pixels' device; weights drawn on the CPU (the same on any device)."""
    sizes = model_sizes(spec.model, spec.units, train_pixels.shape[1])
    model = SBN(sizes, nonlinear=spec.model == "nonlinear", x_mean=train_pixels.mean(0),
                dtype=train_pixels.dtype, generator=gradvar_torch(spec.seed)).to(train_pixels.device)
    return model, make_baselines(model, spec.estimator, hidden=spec.baseline_hidden, alpha=spec.alpha,
                                 generator=gradvar_torch(spec.seed, baseline_nets=True))


def gradient_variance(model: SBN, pixels: Tensor, spec: TrainSpec, baselines: Baselines, iteration: int) -> float:
    """Mean over inference parameters of the per-element variance of the estimator's mini-batch gradient."""
    def grads():
        for m in range(spec.variance_batches):
            idx, seeds = example_seeds(gradvar_rng(spec.seed, Sub.VARIANCE, iteration * spec.variance_batches + m),
                                       spec.batch_size, len(pixels))
            x, u = draw_batch(pixels[idx], model, seeds)
            yield inference_gradient(model, x, u, spec.estimator, baselines)

    return float(welford(grads())[2].mean())


def evaluate(model: SBN, pixels: Tensor, *, eval_seed: int, samples: int) -> float:
    """Mean bound over the whole set with fixed per-example noise: ELBO for samples = 1, else the IW bound."""
    _, seeds = example_seeds(gradvar_rng(eval_seed, Sub.EVAL, samples), len(pixels), 1)
    x, u = draw_batch(pixels, model, seeds, draws=samples)
    return float(iw_bound(model, x, u.reshape(len(pixels), samples, -1)).mean())


def train(spec: TrainSpec, train_pixels: Tensor, val_pixels: Tensor, test_pixels: Tensor,
          report: Callable[[dict[str, Any]], None] = lambda metrics: None,
          on_eval: Callable[[SBN, int], None] | None = None) -> dict[str, Any]:
    """Train on the pixels' device; call `report` after every evaluation (the last one holds the test
    bound); return the last metrics.

    `on_eval(model, iteration)` runs at every evaluation too, before `report` (e.g. to measure other
    estimators at these very parameters); it must not change the model.
    """
    spec.check()
    model, baselines = build(spec, train_pixels)
    params = list(model.parameters()) + ([] if baselines.nets is None else list(baselines.nets.parameters()))
    optimizer = torch.optim.RMSprop(params, lr=spec.lr, weight_decay=spec.weight_decay)
    train_seconds, cpu_seconds, metrics = 0.0, 0.0, {}
    for it in range(1, spec.iterations + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        idx, seeds = example_seeds(gradvar_rng(spec.seed, Sub.TRAIN, it), spec.batch_size, len(train_pixels))
        x, u = draw_batch(train_pixels[idx], model, seeds)
        est = estimate(model, x, u, spec.estimator, baselines)
        loss = -est.objective
        fit = baseline_loss(est, baselines)
        if fit is not None:
            loss = loss + fit
        if not math.isfinite(float(loss.detach())):
            raise UserError(f"training {spec.model}/{spec.estimator} at lr={spec.lr} diverged (non-finite loss) "
                            f"at iteration {it}; lower the learning rate")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if spec.estimator in MOVING_BASELINE:
            update_baselines(est, baselines)
        train_seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start  # unlike wall-clock, not inflated by a busy machine
        if it % spec.eval_every == 0 or it == spec.iterations:
            metrics = {
                "iteration": it,
                "train_elbo": float(est.elbo.mean()),
                "grad_var": gradient_variance(model, train_pixels, spec, baselines, it),
                "val_elbo": evaluate(model, val_pixels, eval_seed=spec.eval_seed, samples=1),
                "seconds_per_iteration": train_seconds / it,
                "cpu_seconds_per_iteration": cpu_seconds / it,
            }
            if on_eval is not None:
                on_eval(model, it)
            if it == spec.iterations:
                metrics["test_iw_bound"] = evaluate(model, test_pixels, eval_seed=spec.eval_seed,
                                                    samples=spec.iw_samples)
            report(metrics)
    return metrics


def split_digits(seed: int, *, validation: int, test: int, dtype: torch.dtype = torch.float32
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Digits pixels (intensity / 16 as Bernoulli means, [N, 64]) split into train / validation / test by seed."""
    from raygen.data.arrays import digits_arrays

    images, _ = digits_arrays()
    pixels = torch.from_numpy(images.reshape(len(images), -1)).to(dtype)
    if validation < 1 or test < 1 or validation + test >= len(pixels):
        raise UserError(f"validation ({validation}) and test ({test}) examples must be >= 1 and leave training "
                        f"examples out of {len(pixels)}; lower them")
    order = torch.from_numpy(gradvar_rng(seed, Sub.SPLIT).permutation(len(pixels)))
    val, test_idx, train_idx = order[:validation], order[validation:validation + test], order[validation + test:]
    return pixels[train_idx], pixels[val], pixels[test_idx]
