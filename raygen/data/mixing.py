"""The Ray Data side of contamination studies: streams the rows of mixing plans, never through the driver.

A plan (`Plan`, e.g. a `raygen.contamination.mixing.MixPlan`) says which rows make up one
training set; this module only moves the images. `mixed_dataset` is a streaming pipeline: each source's rows are tagged
with every mix they belong to (`map_batches`, vectorised `isin` per mix), the two sources are
interleaved (`Dataset.mix` for one mix, a union for many) and a seeded permutation is applied to
windows of rows (a `map_batches` permutation keeps most of the throughput; `random_shuffle` would
be a full barrier). `Dataset.mix` alone picks whole blocks by weight, so it cannot give exact
ratios: the exact row set comes from the tagging step. The mixed rows are written (`write_mixes`,
one Parquet partition per mix) or iterated by a training loop.

`Plan` is a protocol rather than an import of `MixPlan`: `data` sits below the algorithm packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raygen import storage
from raygen.errors import UserError
from raygen.seeds import Stream, numpy_rng

SOURCES = ("real", "holdout", "generated")  # the `source` column: kept real row, control or generated replacement


class Plan(Protocol):
    """One training set: `real_ids` kept, `replacement_ids` added (generated ids for arm "generated",
    holdout real ids for arm "control")."""

    arm: str
    real_ids: np.ndarray
    replacement_ids: np.ndarray

    @property
    def key(self) -> str: ...


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


def mixed_dataset(real_ds, generated_ds, plans: list[Plan], *, seed: int, block_rows: int = 256,
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


def write_mixes(real_ds, generated_ds, plans: list[Plan], out_dir: str | Path, *, seed: int) -> None:
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
