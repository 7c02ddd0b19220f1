"""Contamination by replacement, planned on labels and streamed through Ray Data.

1. `split_real`: the real rows are split per class into train / holdout / test. Holdout rows are
   never trained on at ratio 0; they are the control arm's replacements (real images that are
   merely *different*). Test rows are never in any mix.
2. `plan_mix`: for ratio r, class c with n_c training rows, exactly k_c = floor(r * n_c + 1/2)
   of them are dropped and k_c replacement rows of class c are added (generated ones, or holdout
   ones for the control arm), so the set size and its class counts are unchanged. Plans work on
   ids and labels only (a few integers per row, never images). For one seed the dropped rows are
   the same for both arms (a paired comparison) and nested across ratios (the rows dropped at 0.2
   are among those dropped at 0.4); a different seed draws different rows.
3. `mixed_dataset`: a streaming Ray Data pipeline. Each source's rows are tagged with every mix
   they belong to (`map_batches`, vectorised `isin` per mix), the two sources are interleaved
   (`Dataset.mix` for one mix, a union for many) and a seeded permutation is applied to windows
   of rows (a `map_batches` permutation keeps most of the throughput; `random_shuffle` would be a
   full barrier). `Dataset.mix` alone picks whole blocks by weight, so it cannot give exact
   ratios: the exact row set comes from the tagging step. The mixed rows are written (`write_mixes`, one Parquet
   partition per mix) or iterated by a training loop; the driver never holds them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from raygen import storage
from raygen.seeds import Stream, numpy_rng
from raygen.errors import UserError

ARMS = ("generated", "control")
SOURCES = ("real", "holdout", "generated")  # the `source` column: kept real row, control or generated replacement


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


def _tagger(members: list[tuple[str, str, np.ndarray]]):
    """map_batches fn: repeat each row once per (mix, source) whose sorted id list holds it."""

    def tag(batch: dict[str, Any]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"])
        out: dict[str, list] = {"mix": [], "source": [], "id": [], "image": [], "label": []}
        for key, source, member_ids in members:
            rows = np.flatnonzero(np.isin(ids, member_ids, assume_unique=False))
            if len(rows) == 0:
                continue
            out["mix"].append(np.full(len(rows), key, dtype=object))
            out["source"].append(np.full(len(rows), source, dtype=object))
            out["id"].append(ids[rows])
            out["image"].append(np.asarray(batch["image"])[rows])
            out["label"].append(np.asarray(batch["label"])[rows])
        if not out["id"]:
            image = np.asarray(batch["image"])
            return {"mix": np.zeros(0, dtype=object), "source": np.zeros(0, dtype=object),
                    "id": np.zeros(0, np.int64), "image": np.zeros((0, *image.shape[1:]), np.float32),
                    "label": np.zeros(0, np.int64)}
        return {k: np.concatenate(v) for k, v in out.items()}

    return tag


def _permuter(seed: int):
    def permute(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        if n == 0:
            return batch
        # Seeded by the batch's content, so the order does not depend on which worker runs it.
        order = numpy_rng(seed, Stream.MIX_ORDER, int(np.asarray(batch["id"]).sum() % (2**31)), n).permutation(n)
        return {k: np.asarray(v)[order] for k, v in batch.items()}

    return permute


def mixed_dataset(real_ds, generated_ds, plans: list[MixPlan], *, seed: int, block_rows: int = 256,
                  shuffle_rows: int = 1024):
    """One Ray Dataset of `mix, source, id, image, label` rows for all `plans` (streaming).

    `real_ds` and `generated_ds` are Ray Datasets with `id, image, label` (`generated_ds` may be
    None when no plan is of the generated arm). For a single generated-arm plan (a stream feeding
    one training run) the two sources are interleaved block by block at the plan's ratio with
    `Dataset.mix` (exhaustive: every row comes out), and the permutation windows of `shuffle_rows`
    rows span several blocks, so every stretch of the stream holds both sources in about the
    plan's proportion. For many plans (`write_mixes`) the order is irrelevant and a union is used.
    """
    real_members = [(p.key, "real", p.real_ids) for p in plans]
    real_members += [(p.key, "holdout", p.replacement_ids) for p in plans if p.arm == "control"]
    generated_members = [(p.key, "generated", p.replacement_ids) for p in plans if p.arm == "generated"]
    ds = real_ds.map_batches(_tagger(real_members), batch_format="numpy", batch_size=block_rows)
    if generated_members:
        if generated_ds is None:
            raise ValueError("generated-arm plans need generated_ds")
        generated = generated_ds.map_batches(_tagger(generated_members), batch_format="numpy", batch_size=block_rows)
        one = plans[0]
        if len(plans) == 1 and len(one.real_ids) and len(one.replacement_ids):
            from ray.data import MixStoppingCondition

            ds = ds.mix(generated, weights=[len(one.real_ids), len(one.replacement_ids)],
                        stopping_condition=MixStoppingCondition.STOP_ON_LONGEST_DROP)
        else:
            ds = ds.union(generated)
    return ds.map_batches(_permuter(seed), batch_format="numpy", batch_size=shuffle_rows)


def write_mixes(real_ds, generated_ds, plans: list[MixPlan], out_dir: str | Path, *, seed: int) -> None:
    """Stream every mix to `out_dir/mix=<key>/*.parquet` (a path or URI; rebuilt from scratch on every call)."""
    loc = storage.resolve(str(out_dir))
    storage.delete(loc)  # write_parquet appends; a re-run must not double the rows
    mixed_dataset(real_ds, generated_ds, plans, seed=seed).write_parquet(loc.path, filesystem=loc.fs,
                                                                         partition_cols=["mix"])


def read_mix(out_dir: str | Path, key: str) -> dict[str, np.ndarray]:
    """One written mix (in a trial process): `source, id, image, label`, sorted by (source, id) so
    that a training run on it does not depend on the order Ray Data wrote the rows in."""
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401 - registers Ray's tensor extension type for the image column

    part = storage.resolve(str(out_dir)).child(f"mix={key}")
    if not storage.listdir(part):
        raise UserError(f"mix {key} is missing under {storage.display(str(out_dir))}; re-run the study")
    table = pq.read_table(part.path, filesystem=part.fs)
    source = np.asarray(table["source"].to_pylist(), dtype=object)
    ids = table["id"].to_numpy()
    order = np.lexsort((ids, np.asarray([SOURCES.index(s) for s in source])))
    image = np.asarray(table["image"].chunk(0).to_numpy() if table["image"].num_chunks == 1
                       else np.concatenate([c.to_numpy() for c in table["image"].chunks]))
    return {"source": source[order], "id": ids[order], "image": image[order].astype(np.float32),
            "label": table["label"].to_numpy()[order]}
