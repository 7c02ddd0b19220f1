"""The proposed method and its baselines on one few-shot split (Teshima et al., ICML 2020, §5–6).

Every method ends in an RBF kernel ridge regression from X = Z[:, :-1] to Y = Z[:, -1]:

    cmt          h by GCL on the sources (Glow-like INN), augment the n target points, KRR on
                 originals + accepted recombinations, ridge by LOOCV on the n originals; evaluated
                 every `eval_every` epochs so the caller can select the epoch by that same LOOCV
                 ("virtual early stopping") and the INN setting likewise
    fastica      the same augmentation with a linear h from FastICA on the pooled sources
    oracle       the same augmentation with the true f (synthetic data only)
    target_only  KRR on the n target points, LOOCV on them
    source_only  KRR on all source points, LOOCV on them (no target label used)
    pooled       KRR on source + target points, LOOCV on the target points

The n "diagonal" recombinations (i, i, ..., i) reproduce the originals, so they are left out of the
augmented set: the originals are always in, once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from raygen.cmt.augment import SupportFilter, augment
from raygen.cmt.datasets import Mechanism, Split
from raygen.cmt.krr import fit_krr
from raygen.errors import UserError

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
    max_augment: int = 5000  # above this many recombinations, a seeded random subset
    nu: float = 0.1  # OneClassSVM


def _mse(model, z: np.ndarray) -> float:
    return float(np.mean((model.predict(z[:, :-1]) - z[:, -1]) ** 2))


def _krr_result(split: Split, z_fit: np.ndarray, scored_rows: int | None, **extra) -> dict:
    model = fit_krr(z_fit[:, :-1], z_fit[:, -1], scored_rows=scored_rows)
    return {"loocv_mse": model.loocv_mse, "test_mse": _mse(model, split.z_test), "alpha": model.alpha,
            "train_points": len(z_fit), **extra}


def augmented_krr(split: Split, h: Callable, h_inv: Callable, accept: SupportFilter, training: Training,
                  seed: int, **extra) -> dict:
    """Augment the target training points through (h, h⁻¹), fit KRR on originals + accepted recombinations."""
    aug = augment(split.z_train, h, h_inv, max_size=training.max_augment, seed=seed, accept=accept)
    off_diagonal = (aug.idx != aug.idx[:, :1]).any(axis=1)
    z_fit = np.concatenate([split.z_train, aug.z[off_diagonal]])
    return _krr_result(split, z_fit, len(split.z_train), acceptance=aug.acceptance, augmented=int(off_diagonal.sum()),
                       **extra)


def fit_fastica(z: np.ndarray, seed: int) -> tuple[Callable, Callable]:
    """A linear h = W(z − m) by FastICA (unit-variance whitening) and its inverse."""
    import warnings

    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    ica = FastICA(n_components=z.shape[1], whiten="unit-variance", max_iter=2000, tol=1e-6, random_state=seed)
    with warnings.catch_warnings():  # not converging is a property of the baseline, reported by its score
        warnings.simplefilter("ignore", ConvergenceWarning)
        ica.fit(z)
    return ica.transform, ica.inverse_transform


def run_cmt(split: Split, setting: Setting, training: Training, seed: int, accept: SupportFilter,
            on_eval: Callable[[dict], None] | None) -> list[dict]:
    import torch

    from raygen.cmt.gcl import train_gcl
    from raygen.cmt.inn import InvertibleNet

    torch.manual_seed(seed)
    z = torch.from_numpy(split.z_source)
    dim = z.shape[1]
    net = InvertibleNet(dim, setting.depth, setting.coupling_hidden, seed=seed)

    def h(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x))[0].numpy()

    def h_inv(s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net.inverse(torch.from_numpy(s)).numpy()

    evals: list[dict] = []

    def on_epoch(epoch: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise UserError(f"GCL loss became {loss} at epoch {epoch} ({setting.label()}); lower lr or raise weight decay")
        if epoch % training.eval_every and epoch != training.epochs:
            return
        with torch.no_grad():  # diagnostic: how far h is from volume-preserving on the target points
            log_det = float(net(torch.from_numpy(split.z_train))[1].mean())
        evals.append(augmented_krr(split, h, h_inv, accept, training, seed, epoch=epoch, gcl_loss=loss,
                                   log_det=log_det))
        if on_eval is not None:
            on_eval(evals[-1])

    train_gcl(net, z, torch.from_numpy(split.u_source), n_domains=int(split.u_source.max()) + 1,
              classifier_hidden=setting.classifier_hidden, lr=training.lr, weight_decay=setting.weight_decay,
              batch_size=training.batch_size, epochs=training.epochs, seed=seed, on_epoch=on_epoch)
    return evals


def run_method(method: str, split: Split, *, training: Training, seed: int, setting: Setting | None = None,
               mechanism: Mechanism | None = None, on_eval: Callable[[dict], None] | None = None) -> list[dict]:
    """All evaluations of one method on one split (one for every method but `cmt`, which gives one per eval epoch).

    Each is a dict with loocv_mse (the selection score), test_mse, alpha and, for augmenting methods,
    acceptance and augmented (the number of recombinations kept besides the originals).
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method == "target_only":
        evals = [_krr_result(split, split.z_train, None)]
    elif method == "source_only":
        evals = [_krr_result(split, split.z_source, None)]
    elif method == "pooled":
        evals = [_krr_result(split, np.concatenate([split.z_train, split.z_source]), len(split.z_train))]
    else:
        accept = SupportFilter(split.z_source, nu=training.nu)
        if method == "cmt":
            if setting is None:
                raise ValueError("method 'cmt' needs a Setting")
            return run_cmt(split, setting, training, seed, accept, on_eval)
        if method == "oracle":
            if mechanism is None:
                raise UserError("method 'oracle' needs the true mechanism f: use it on synthetic data only")
            h, h_inv = mechanism.f_inv, mechanism.f
        else:
            h, h_inv = fit_fastica(split.z_source, seed)
        evals = [augmented_krr(split, h, h_inv, accept, training, seed)]
    if on_eval is not None:
        on_eval(evals[0])
    return evals
