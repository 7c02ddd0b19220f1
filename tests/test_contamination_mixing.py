"""Invariants of contamination by replacement: plans (pure numpy, raygen.contamination.mixing) and the Ray Data
pipeline that carries them out (raygen.data.mixing)."""

from collections import Counter

import numpy as np
import pytest

from raygen.contamination.mixing import ARMS, plan_mix, plan_study, replaced_per_class, split_real
from raygen.data.mixing import read_mix, write_mixes
from raygen.errors import UserError

RATIOS = [0.0, 0.2, 0.4, 0.8, 1.0]


def digits_like(n_per_class=(23, 17, 30)):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    rng = np.random.default_rng(7)
    return np.arange(len(labels), dtype=np.int64), labels[rng.permutation(len(labels))]


def test_split_is_disjoint_complete_and_holdout_covers_train_per_class():
    ids, labels = digits_like()
    s = split_real(ids, labels, test_fraction=0.2, seed=3)
    all_ids = np.concatenate([s.train, s.holdout, s.test])
    assert sorted(all_ids.tolist()) == ids.tolist()  # each id in exactly one part
    for c, m in Counter(labels.tolist()).items():
        n_test = int(np.floor(0.2 * m + 0.5))
        assert (labels[s.test] == c).sum() == n_test
        assert (labels[s.train] == c).sum() == (m - n_test) // 2
        assert (labels[s.holdout] == c).sum() >= (labels[s.train] == c).sum()


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_plan_counts_are_exact_per_class(ratio, arm):
    ids, labels = digits_like()
    s = split_real(ids, labels, test_fraction=0.2, seed=0)
    pool_ids = s.holdout if arm == "control" else np.arange(1000, 1300)
    pool_labels = labels[s.holdout] if arm == "control" else np.arange(300) % 3
    p = plan_mix(s.train, labels[s.train], pool_ids, pool_labels, ratio=ratio, arm=arm, seed=5)
    pool_label_of = dict(zip(pool_ids.tolist(), pool_labels.tolist()))
    for c in range(3):
        n_c = int((labels[s.train] == c).sum())
        k = replaced_per_class(n_c, ratio)
        assert (labels[p.real_ids] == c).sum() == n_c - k
        assert sum(pool_label_of[i] == c for i in p.replacement_ids.tolist()) == k
    assert len(p.real_ids) + len(p.replacement_ids) == len(s.train)
    assert len(set(p.real_ids.tolist())) == len(p.real_ids) and len(set(p.replacement_ids.tolist())) == len(p.replacement_ids)
    assert set(p.real_ids.tolist()) <= set(s.train.tolist())
    assert set(p.replacement_ids.tolist()) <= set(pool_ids.tolist())
    assert not set(p.real_ids.tolist()) & set(s.test.tolist())


def test_plans_are_seeded_paired_and_nested():
    ids, labels = digits_like()
    s = split_real(ids, labels, test_fraction=0.2, seed=0)
    gen_ids, gen_labels = np.arange(500), np.arange(500) % 3
    a = plan_study(s, lambda i: labels[i], gen_ids, gen_labels, ratios=RATIOS, seeds=[0, 1])
    b = plan_study(s, lambda i: labels[i], gen_ids, gen_labels, ratios=RATIOS, seeds=[0, 1])
    for p, q in zip(a, b):
        assert p.key == q.key
        np.testing.assert_array_equal(p.real_ids, q.real_ids)
        np.testing.assert_array_equal(p.replacement_ids, q.replacement_ids)
    by_key = {p.key: p for p in a}
    g0, g1 = by_key["r0.4000-generated-s0"], by_key["r0.4000-generated-s1"]
    assert not np.array_equal(g0.real_ids, g1.real_ids) and not np.array_equal(g0.replacement_ids, g1.replacement_ids)
    np.testing.assert_array_equal(g0.real_ids, by_key["r0.4000-control-s0"].real_ids)  # paired arms
    assert set(by_key["r0.4000-control-s0"].real_ids.tolist()) <= set(by_key["r0.2000-control-s0"].real_ids.tolist())


def test_too_few_replacements_is_a_user_error():
    ids, labels = digits_like()
    s = split_real(ids, labels, test_fraction=0.2, seed=0)
    with pytest.raises(UserError, match="draw more samples"):
        plan_mix(s.train, labels[s.train], np.arange(6), np.arange(6) % 3, ratio=1.0, arm="generated", seed=0)


def _rows(mix):
    return sorted(zip(mix["source"].tolist(), mix["id"].tolist()))


def test_pipeline_writes_exactly_the_planned_rows(tmp_path, ray_local):
    ray = ray_local
    ids, labels = digits_like()
    # image pixel 0 carries the id and source, so the written images can be traced back to their row
    real_images = np.zeros((len(ids), 1, 4, 4), np.float32)
    real_images[:, 0, 0, 0] = ids
    n_gen = 150
    gen_ids, gen_labels = np.arange(n_gen, dtype=np.int64), np.arange(n_gen, dtype=np.int64) % 3
    gen_images = np.zeros((n_gen, 1, 4, 4), np.float32)
    gen_images[:, 0, 0, 0] = -1 - gen_ids
    real_ds = ray.data.from_items([{"id": int(i), "image": real_images[i], "label": int(labels[i])} for i in ids])
    gen_ds = ray.data.from_items([{"id": int(i), "image": gen_images[i], "label": int(gen_labels[i])} for i in gen_ids])
    s = split_real(ids, labels, test_fraction=0.2, seed=0)
    plans = plan_study(s, lambda i: labels[i], gen_ids, gen_labels, ratios=[0.0, 0.4, 1.0], seeds=[0, 1])
    write_mixes(real_ds, gen_ds, plans, tmp_path / "a", seed=0)
    mixes = {p.key: read_mix(tmp_path / "a", p.key) for p in plans}
    for p in plans:
        m = mixes[p.key]
        rows = _rows(m)
        assert len(rows) == len(set(rows)) == len(s.train)  # no duplicates, size fixed
        replacement = "generated" if p.arm == "generated" else "holdout"
        assert sorted(m["id"][m["source"] == "real"].tolist()) == p.real_ids.tolist()
        assert sorted(m["id"][m["source"] == replacement].tolist()) == p.replacement_ids.tolist()
        assert set(m["source"].tolist()) <= {"real", replacement}
        real_rows = m["source"] != "generated"
        assert not set(m["id"][real_rows].tolist()) & set(s.test.tolist())  # no test leakage
        assert Counter(m["label"].tolist()) == Counter(labels[s.train].tolist())  # class balance kept
        traced = np.where(real_rows, m["id"], -1 - m["id"])
        np.testing.assert_array_equal(m["image"][:, 0, 0, 0], traced)  # image travelled with its id
        label_of = np.where(real_rows, labels[np.where(real_rows, m["id"], 0)], gen_labels[np.where(real_rows, 0, m["id"])])
        np.testing.assert_array_equal(m["label"], label_of)
    # same seed -> same mix, also from a separate pipeline run; different seed -> different mix
    again = [p for p in plans if p.seed == 0]
    write_mixes(real_ds, gen_ds, again, tmp_path / "b", seed=0)
    for p in again:
        assert _rows(read_mix(tmp_path / "b", p.key)) == _rows(mixes[p.key])
    assert _rows(mixes["r0.4000-generated-s0"]) != _rows(mixes["r0.4000-generated-s1"])


def test_single_mix_stream_is_exact_and_interleaved(ray_local):
    ray = ray_local
    from raygen.data.mixing import mixed_dataset

    n = 2000
    ids = np.arange(n, dtype=np.int64)
    labels = ids % 4
    real_ds = ray.data.range(n, override_num_blocks=4).map_batches(
        lambda b: {"id": b["id"], "image": np.zeros((len(b["id"]), 1, 2, 2), np.float32), "label": b["id"] % 4})
    gen_ds = ray.data.range(n, override_num_blocks=4).map_batches(
        lambda b: {"id": b["id"], "image": np.ones((len(b["id"]), 1, 2, 2), np.float32), "label": b["id"] % 4})
    plan = plan_mix(ids, labels, ids, labels, ratio=0.4, arm="generated", seed=0)
    rows = []
    for batch in mixed_dataset(real_ds, gen_ds, [plan], seed=0).iter_batches(batch_size=200, batch_format="numpy"):
        rows.append(batch)
    source = np.concatenate([b["source"] for b in rows])
    got = np.concatenate([b["id"] for b in rows])
    assert sorted(got[source == "real"].tolist()) == plan.real_ids.tolist()
    assert sorted(got[source == "generated"].tolist()) == plan.replacement_ids.tolist()
    image = np.concatenate([b["image"] for b in rows])[:, 0, 0, 0]
    np.testing.assert_array_equal(image, (source == "generated").astype(np.float32))
    # interleaved: the generated share of each quarter of the stream is near 0.4, not 0 or 1
    for quarter in np.array_split(source == "generated", 4):
        assert 0.2 < quarter.mean() < 0.6


def test_contamination_never_imports_ray():
    """The package is plain numpy/torch (its Ray Data side is raygen.data.mixing). Checked both ways: importing
    every module in a fresh interpreter (other tests' imports would hide it here) loads no `ray`, and no module
    imports Ray inside a function either (a lazy import is still a dependency)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import raygen.contamination

    files = sorted(Path(raygen.contamination.__path__[0]).glob("*.py"))
    names = [f"raygen.contamination.{f.stem}" for f in files if f.stem != "__init__"]
    assert "raygen.contamination.mixing" in names
    code = f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n" \
           "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    for f in files:
        tree = ast.parse(f.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert [m for m in imported if m.split(".")[0] == "ray"] == [], f.name
