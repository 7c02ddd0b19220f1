"""Tasks derived from the data, zoo members, and their determinism."""

import pytest
import torch

from raygen.errors import UserError
from raygen.models.params import ParamLayout, flatten
from raygen.weightgen.zoo import (
    apply_task, init_model, make_task, split, subset_names, support_set, train_member, trajectory,
)

ARCH = dict(in_channels=1, num_classes=10, width=4, feature_dim=16)


def _data(n=60):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 10


DIGITS = dict(num_classes=10, numel=64)


def test_task_definitions_are_deterministic_and_distinct():
    assert make_task("subset", 3, 0, classes_per_task=4, **DIGITS) == make_task("subset", 3, 0, classes_per_task=4, **DIGITS)
    assert make_task("subset", 3, 0, classes_per_task=4, **DIGITS) != make_task("subset", 4, 0, classes_per_task=4, **DIGITS)
    assert sorted(make_task("permutation", 1, 0, **DIGITS)["perm"]) == list(range(64))
    assert sorted(make_task("permutation", 1, 0, num_classes=3, numel=2 * 3 * 5)["perm"]) == list(range(30))
    with pytest.raises(UserError, match="task_family"):
        make_task("nope", 0, 0, **DIGITS)
    with pytest.raises(UserError, match="classes_per_task is 4 but the data has 3 classes"):
        make_task("subset", 0, 0, classes_per_task=4, num_classes=3, numel=64)


def test_column_task_keeps_its_rows_and_relabels_its_classes():
    x, y = _data()
    t = torch.tensor([1 if int(v) in (1, 4, 7) else 0 for v in y])  # task 1 holds classes 1, 4, 7
    task = {"family": "column", "index": 1, "value": "b", "classes": [1, 4, 7]}
    xt, yt = apply_task(task, x, y, t)
    keep = t == 1
    assert torch.equal(xt, x[keep])
    assert torch.equal(yt, torch.tensor([{1: 0, 4: 1, 7: 2}[int(v)] for v in y[keep]]))


def test_subset_task_keeps_and_relabels_exactly():
    x, y = _data()
    task = {"family": "subset", "classes": [7, 2, 5]}
    xt, yt = apply_task(task, x, y)
    keep = (y == 7) | (y == 2) | (y == 5)
    assert torch.equal(xt, x[keep])
    assert torch.equal(yt, torch.tensor([{7: 0, 2: 1, 5: 2}[int(v)] for v in y[keep]]))


def test_permutation_and_rotation_tasks():
    x, y = _data()
    task = make_task("permutation", 0, 0, **DIGITS)
    xt, yt = apply_task(task, x, y)
    assert torch.equal(yt, y) and torch.equal(xt.flatten(1), x.flatten(1)[:, torch.tensor(task["perm"])])
    xr, _ = apply_task({"family": "rotation", "angle": 0.0}, x, y)
    torch.testing.assert_close(xr, x, rtol=0, atol=1e-6)  # a zero rotation is the identity
    x180, _ = apply_task({"family": "rotation", "angle": 180.0}, x, y)
    torch.testing.assert_close(x180, x.flip(-1, -2), rtol=0, atol=1e-5)


def test_split_is_a_partition_and_support_sets_follow_labels():
    x, y = _data(100)
    parts = split(x, y)
    assert sum(len(v[0]) for v in parts.values()) == 100
    s = support_set(x, y, 10, 3)
    assert s.shape == (10, 3, 64) and torch.equal(s[4, 0], x[y == 4][0].flatten())
    with pytest.raises(UserError, match="support_shots"):
        support_set(x, y, 10, 11)  # 10 images per class


def test_redrawn_support_sets_are_distinct_members_of_their_class_and_reproducible():
    x, y = _data(100)
    flat = x.flatten(1)
    draws = [support_set(x, y, 10, 3, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1])  # a generator's seed fixes the draw
    assert not torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], support_set(x, y, 10, 3))
    for c in range(10):
        rows = [int(torch.nonzero((flat == img).all(1))[0, 0]) for img in draws[2][c]]
        assert len(set(rows)) == 3 and all(int(y[r]) == c for r in rows)  # without replacement, in label order


def test_members_and_trajectories_are_bit_reproducible():
    x, y = _data()
    a = train_member(ARCH, (x, y), init_seed=1, order=torch.Generator().manual_seed(2), steps=5, lr=0.01, batch_size=16)
    b = train_member(ARCH, (x, y), init_seed=1, order=torch.Generator().manual_seed(2), steps=5, lr=0.01, batch_size=16)
    layout = ParamLayout.of(a, subset_names(a, "head"))
    assert torch.equal(flatten(dict(a.named_parameters()), ParamLayout.of(a)),
                       flatten(dict(b.named_parameters()), ParamLayout.of(b)))
    t1 = trajectory(a, layout, (x, y), order=torch.Generator().manual_seed(3), checkpoints=4, steps_per_checkpoint=2, lr=0.05, batch_size=16)
    t2 = trajectory(a, layout, (x, y), order=torch.Generator().manual_seed(3), checkpoints=4, steps_per_checkpoint=2, lr=0.05, batch_size=16)
    assert t1.shape == (4, layout.numel) and torch.equal(t1, t2)
    assert not torch.equal(t1[0], t1[1])  # it moves
    # only the head trained: the base model is untouched and the rest is not in theta
    assert torch.equal(flatten(dict(a.named_parameters()), layout), flatten(dict(b.named_parameters()), layout))
    fresh = init_model(ARCH, 1)
    assert not torch.equal(fresh.head.weight, a.head.weight)


def test_an_adamw_trajectory_spreads_its_checkpoints_far_more_than_sgd():
    """p-diff's collection (AdamW at lr 0.03) scatters checkpoints per coordinate; SGD with momentum
    at lr 0.01 (raygen's default trajectory) keeps them close: the spread the normalisation must keep."""
    x, y = _data()
    base = train_member(ARCH, (x, y), init_seed=1, order=torch.Generator().manual_seed(2), steps=40, lr=0.01,
                        batch_size=16)
    layout = ParamLayout.of(base, subset_names(base, "head"))

    def spread(optimizer, lr):
        t = trajectory(base, layout, (x, y), order=torch.Generator().manual_seed(3), checkpoints=30,
                       steps_per_checkpoint=1, lr=lr, batch_size=16, optimizer=optimizer)
        return float(t.std(0).mean())

    assert spread("adamw", 0.03) > 10 * spread("sgd", 0.01)
