"""The proposed method and its baselines on one few-shot split (Teshima et al., ICML 2020, §5–6).

Every method ends in an RBF kernel ridge regression from X = Z[:, :-1] to Y = Z[:, -1] (in the
reference's form θ = (KᵀK + αI)⁻¹Kᵀy by default, `Training.krr_form`):

    cmt          h by GCL on the sources (Glow-like INN), augment the n target points, KRR on
                 originals + accepted recombinations, ridge by LOOCV on the n originals; evaluated
                 every `eval_every` epochs so the caller can select the epoch and the INN setting
    fastica      the same augmentation with a linear h from FastICA on the pooled sources
    oracle       the same augmentation with the true f (synthetic data only)
    target_only  KRR on the n target points, LOOCV on them
    source_only  KRR on all source points, LOOCV on them (no target label used)
    pooled       KRR on source + target points, LOOCV on the target points

Every evaluation carries two scores on the n target training points:
- `loocv_mse`, the fit's own (partial) LOOCV at its chosen ridge. For augmenting methods it leaks:
  the augmented points still carry the left-out point's components, so it can be tiny where the
  test error is huge.
- `nested_loo_mse`, the reference's selection score: for each of the n points, redo the method's
  target-dependent part (augmentation included) from the other n − 1, fit, and score the held-out
  original point. The epoch and setting are chosen by this one (`raygen.cmt.report.select`).

The n "diagonal" recombinations (i, i, ..., i) reproduce the originals, so they are left out of the
augmented set: the originals are always in, once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from raygen.cmt.augment import SupportFilter, augment
from raygen.cmt.datasets import Mechanism, Split
from raygen.cmt.krr import KRR, Form, fit_krr
from raygen.errors import UserError

if TYPE_CHECKING:
    import torch

METHODS = ("cmt", "fastica", "oracle", "target_only", "source_only", "pooled")
AUGMENTING = ("cmt", "fastica", "oracle")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the INN / GCL grid (used by `cmt` only)."""

    depth: int
    coupling_hidden: int
    classifier_hidden: int
    weight_decay: float

    def label(self) -> str:
        return f"depth={self.depth} coupling={self.coupling_hidden} clf={self.classifier_hidden} wd={self.weight_decay:g}"


@dataclasses.dataclass(frozen=True)
class Training:
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 500
    eval_every: int = 20
    max_augment: int = 5000  # above this many recombinations, a random subset
    nu: float = 0.1  # OneClassSVM
    krr_form: Form = "reference"  # raygen.cmt.krr.FORMS


# a method's target-dependent part: target training rows -> (fitted KRR, facts about the fit)
Fit = Callable[[np.ndarray], tuple[KRR, dict]]


def _mse(model: KRR, z: np.ndarray) -> float:
    return float(np.mean((model.predict(z[:, :-1]) - z[:, -1]) ** 2))


def nested_loo_mse(z_train: np.ndarray, fit: Fit) -> float:
    """Mean over i of the squared error at original point i of `fit` redone on the other n − 1 points."""
    return float(np.mean([_mse(fit(np.delete(z_train, i, axis=0))[0], z_train[i : i + 1])
                          for i in range(len(z_train))]))


def evaluate(split: Split, fit: Fit, **extra) -> dict:
    """Fit on the n target training points; both selection scores, the test MSE and the fit's facts."""
    model, facts = fit(split.z_train)
    return {"loocv_mse": model.loocv_mse, "nested_loo_mse": nested_loo_mse(split.z_train, fit),
            "test_mse": _mse(model, split.z_test), "alpha": model.alpha, **facts, **extra}


def plain_fit(z_extra: np.ndarray, form: Form) -> Fit:
    """KRR on the target rows plus the fixed rows `z_extra`, ridge by LOOCV on the target rows."""
    def fit(z: np.ndarray) -> tuple[KRR, dict]:
        z_fit = np.concatenate([z, z_extra])
        return fit_krr(z_fit[:, :-1], z_fit[:, -1], scored_rows=len(z), form=form), {"train_points": len(z_fit)}
    return fit


def augmenting_fit(h: Callable, h_inv: Callable, accept: SupportFilter, training: Training,
                   rng: np.random.Generator) -> Fit:
    """Augment the target rows through (h, h⁻¹), fit KRR on originals + accepted off-diagonal recombinations."""
    def fit(z: np.ndarray) -> tuple[KRR, dict]:
        aug = augment(z, h, h_inv, max_size=training.max_augment, rng=rng, accept=accept)
        off_diagonal = (aug.idx != aug.idx[:, :1]).any(axis=1)
        z_fit = np.concatenate([z, aug.z[off_diagonal]])
        model = fit_krr(z_fit[:, :-1], z_fit[:, -1], scored_rows=len(z), form=training.krr_form)
        return model, {"train_points": len(z_fit), "acceptance": aug.acceptance,
                       "augmented": int(off_diagonal.sum())}
    return fit


def fit_fastica(z: np.ndarray, rng: np.random.Generator) -> tuple[Callable, Callable]:
    """A linear h = W(z − m) by FastICA (unit-variance whitening) and its inverse."""
    import warnings

    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    # scikit-learn takes an int or a legacy RandomState, not a Generator: one draw from ours seeds it
    ica = FastICA(n_components=z.shape[1], whiten="unit-variance", max_iter=2000, tol=1e-6,
                  random_state=int(rng.integers(2**31 - 1)))
    with warnings.catch_warnings():  # not converging is a property of the baseline, reported by its score
        warnings.simplefilter("ignore", ConvergenceWarning)
        ica.fit(z)
    return ica.transform, ica.inverse_transform


def run_cmt(split: Split, setting: Setting, training: Training, generator: "torch.Generator",
            rng: np.random.Generator, accept: SupportFilter, on_eval: Callable[[dict], None] | None,
            device: "torch.device | str" = "cpu") -> list[dict]:
    import torch

    from raygen.cmt.gcl import train_gcl
    from raygen.cmt.inn import InvertibleNet

    z = torch.from_numpy(split.z_source).to(device)
    dim = z.shape[1]
    # initialised on the CPU from the CPU generator, then moved: the same start on any device
    net = InvertibleNet(dim, setting.depth, setting.coupling_hidden, generator=generator).to(device)

    def apply(fn: Callable, x: np.ndarray) -> np.ndarray:  # augmentation and KRR stay numpy on the CPU
        with torch.no_grad():
            return fn(torch.from_numpy(x).to(device)).cpu().numpy()

    def h(x: np.ndarray) -> np.ndarray:
        return apply(lambda t: net(t)[0], x)

    def h_inv(s: np.ndarray) -> np.ndarray:
        return apply(net.inverse, s)

    fit = augmenting_fit(h, h_inv, accept, training, rng)
    evals: list[dict] = []

    def on_epoch(epoch: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise UserError(f"GCL loss became {loss} at epoch {epoch} ({setting.label()}); lower lr or raise weight decay")
        if epoch % training.eval_every and epoch != training.epochs:
            return
        with torch.no_grad():  # diagnostic: how far h is from volume-preserving on the target points
            log_det = float(net(torch.from_numpy(split.z_train).to(device))[1].mean())
        evals.append(evaluate(split, fit, epoch=epoch, gcl_loss=loss, log_det=log_det))
        if on_eval is not None:
            on_eval(evals[-1])

    train_gcl(net, z, torch.from_numpy(split.u_source), n_domains=int(split.u_source.max()) + 1,
              classifier_hidden=setting.classifier_hidden, lr=training.lr, weight_decay=setting.weight_decay,
              batch_size=training.batch_size, epochs=training.epochs, generator=generator, on_epoch=on_epoch)
    return evals


def run_method(method: str, split: Split, *, training: Training, rng: np.random.Generator,
               generator: "torch.Generator | None" = None, setting: Setting | None = None,
               mechanism: Mechanism | None = None, on_eval: Callable[[dict], None] | None = None,
               device: "torch.device | str" = "cpu") -> list[dict]:
    """All evaluations of one method on one split (one for every method but `cmt`, which gives one per eval epoch).

    Each is a dict with loocv_mse and nested_loo_mse (the selection scores, see the module docs),
    test_mse, alpha and, for augmenting methods, acceptance and augmented (the number of
    recombinations kept besides the originals). `rng` draws recombination subsets and FastICA's
    start; `generator` (cmt only) the INN's and classifier's init and the GCL batches, drawn on
    the CPU whatever `device` (where cmt's INN and GCL compute; every other method is numpy).
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    form = training.krr_form
    if method == "target_only":
        evals = [evaluate(split, plain_fit(split.z_train[:0], form))]
    elif method == "source_only":
        model = fit_krr(split.z_source[:, :-1], split.z_source[:, -1], form=form)
        evals = [evaluate(split, lambda z: (model, {"train_points": len(split.z_source)}))]
    elif method == "pooled":
        evals = [evaluate(split, plain_fit(split.z_source, form))]
    else:
        accept = SupportFilter(split.z_source, nu=training.nu)
        if method == "cmt":
            if setting is None or generator is None:
                raise ValueError("method 'cmt' needs a Setting and a torch generator")
            return run_cmt(split, setting, training, generator, rng, accept, on_eval, device)
        if method == "oracle":
            if mechanism is None:
                raise UserError("method 'oracle' needs the true mechanism f: use it on synthetic data only")
            h, h_inv = mechanism.f_inv, mechanism.f
        else:
            h, h_inv = fit_fastica(split.z_source, rng)
        evals = [evaluate(split, augmenting_fit(h, h_inv, accept, training, rng))]
    if on_eval is not None:
        on_eval(evals[0])
    return evals
