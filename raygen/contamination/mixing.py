"""Contamination by replacement, planned on labels (ids and labels only; no Ray, no images).

1. `split_real`: the real rows are split per class into train / holdout / test. Holdout rows are
   never trained on at ratio 0; they are the control arm's replacements (real images that are
   merely *different*). Test rows are never in any mix.
2. `plan_mix`: for ratio r, class c with n_c training rows, exactly k_c = floor(r * n_c + 1/2)
   of them are dropped and k_c replacement rows of class c are added (generated ones, or holdout
   ones for the control arm), so the set size and its class counts are unchanged. Plans work on
   ids and labels only (a few integers per row, never images). For one seed the dropped rows are
   the same for both arms (a paired comparison) and nested across ratios (the rows dropped at 0.2
   are among those dropped at 0.4); a different seed draws different rows.

The plans are carried out by the Ray Data pipeline in `raygen.data.mixing` (`mixed_dataset`,
`write_mixes`, `read_mix`), which streams the images; this package stays free of Ray.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raygen.seeds import Stream, numpy_rng
from raygen.errors import UserError

ARMS = ("generated", "control")


@dataclasses.dataclass(frozen=True)
class Split:
    train: np.ndarray  # real ids, sorted
    holdout: np.ndarray
    test: np.ndarray


def split_real(ids: np.ndarray, labels: np.ndarray, *, test_fraction: float, seed: int) -> Split:
    """Per class: floor(test_fraction * m + 1/2) test rows, then the rest halved into train (the
    smaller half) and holdout, so every class's holdout can replace its whole training set."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    parts: dict[str, list[np.ndarray]] = {"train": [], "holdout": [], "test": []}
    for c in np.unique(labels):
        rows = ids[labels == c]
        rows = rows[numpy_rng(seed, Stream.SPLIT, int(c)).permutation(len(rows))]
        n_test = int(np.floor(test_fraction * len(rows) + 0.5))
        n_train = (len(rows) - n_test) // 2
        parts["test"].append(rows[:n_test])
        parts["train"].append(rows[n_test:n_test + n_train])
        parts["holdout"].append(rows[n_test + n_train:])
    return Split(**{k: np.sort(np.concatenate(v)) for k, v in parts.items()})


@dataclasses.dataclass(frozen=True)
class MixPlan:
    ratio: float
    arm: str
    seed: int
    real_ids: np.ndarray  # training rows kept (real ids)
    replacement_ids: np.ndarray  # rows added: generated ids (generated arm) or holdout real ids (control)

    @property
    def key(self) -> str:
        return mix_key(self.ratio, self.arm, self.seed)


def mix_key(ratio: float, arm: str, seed: int) -> str:
    return f"r{ratio:.4f}-{arm}-s{seed}"


def replaced_per_class(n: int, ratio: float) -> int:
    return int(np.floor(ratio * n + 0.5))


def plan_mix(train_ids: np.ndarray, train_labels: np.ndarray, pool_ids: np.ndarray, pool_labels: np.ndarray, *,
             ratio: float, arm: str, seed: int) -> MixPlan:
    """Which training rows to drop and which pool rows (same classes) to add, exactly, per class."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"contamination ratio {ratio} is outside [0, 1]")
    keep, add = [], []
    for c in np.unique(train_labels):
        rows = np.sort(train_ids[train_labels == c])
        pool = np.sort(pool_ids[pool_labels == c])
        k = replaced_per_class(len(rows), ratio)
        if k > len(pool):
            what = "generated images" if arm == "generated" else "held-back real images"
            raise UserError(f"ratio {ratio} needs {k} {what} of class {int(c)} but there are only {len(pool)}; "
                            f"{'draw more samples (n_samples)' if arm == 'generated' else 'lower the largest ratio'}")
        # Drop order depends on (seed, class) only: paired across arms, nested across ratios.
        dropped = rows[numpy_rng(seed, Stream.MIX_DROP, int(c)).permutation(len(rows))[:k]]
        keep.append(np.setdiff1d(rows, dropped))
        add.append(pool[numpy_rng(seed, Stream.MIX_ADD, int(c), ARMS.index(arm)).permutation(len(pool))[:k]])
    return MixPlan(ratio, arm, seed, np.sort(np.concatenate(keep)), np.sort(np.concatenate(add)))


def plan_study(split: Split, real_labels_of, generated_ids: np.ndarray, generated_labels: np.ndarray, *,
               ratios: list[float], seeds: list[int]) -> list[MixPlan]:
    """Every (ratio, arm, seed) plan; `real_labels_of(ids)` maps real ids to labels."""
    train_labels, holdout_labels = real_labels_of(split.train), real_labels_of(split.holdout)
    plans = []
    for seed in seeds:
        for ratio in ratios:
            plans.append(plan_mix(split.train, train_labels, generated_ids, generated_labels,
                                  ratio=ratio, arm="generated", seed=seed))
            plans.append(plan_mix(split.train, train_labels, split.holdout, holdout_labels,
                                  ratio=ratio, arm="control", seed=seed))
    return plans
