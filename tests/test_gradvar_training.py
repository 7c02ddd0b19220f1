import pytest
import torch

from raygen.errors import UserError
from raygen.gradvar.training import TrainSpec, split_digits, train

SMALL = dict(units=4, batch_size=10, iterations=30, eval_every=15, variance_batches=3, iw_samples=3, baseline_hidden=8)


@pytest.fixture(scope="module")
def data():
    train_px, val_px, test_px = split_digits(0, validation=20, test=20)
    return train_px, val_px, test_px


def test_split_is_disjoint_and_seeded(data):
    train_px, val_px, test_px = data
    assert (len(train_px), len(val_px), len(test_px)) == (1757, 20, 20)
    assert float(train_px.min()) >= 0 and float(train_px.max()) <= 1
    again = split_digits(0, validation=20, test=20)
    assert all(torch.equal(a, b) for a, b in zip(data, again))
    assert not torch.equal(split_digits(1, validation=20, test=20)[1], val_px)


@pytest.mark.parametrize("estimator", ["nvil", "optimal"])
def test_training_is_deterministic_and_reports_every_evaluation(data, estimator):
    spec = TrainSpec(estimator=estimator, lr=3e-3, **SMALL)
    runs = []
    for _ in range(2):
        reports = []
        train(spec, *data, report=reports.append)
        runs.append(reports)
    assert [r["iteration"] for r in runs[0]] == [15, 30]
    assert "test_iw_bound" in runs[0][-1] and "test_iw_bound" not in runs[0][0]
    for a, b in zip(*runs):
        timing = ("seconds_per_iteration", "cpu_seconds_per_iteration")
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert runs[0][-1]["grad_var"] > 0


def test_bad_specs_are_one_line(data):
    for spec, message in ((TrainSpec(iw_samples=0), "iw_samples"), (TrainSpec(estimator="score"), "unknown gradient"),
                          (TrainSpec(units=0), "layer sizes must all be >= 1"),
                          (TrainSpec(variance_batches=1), "variance_batches")):
        with pytest.raises(UserError, match=message) as err:
            train(spec, *data)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="validation"):
        split_digits(0, validation=0, test=10)


def test_gradvar_streams_keep_their_legacy_keys():
    # Stream.GRADVAR's documented legacy mapping: the README's gradvar figures were made with these keys
    import numpy as np

    from raygen.gradvar.training import Sub, gradvar_rng, gradvar_torch

    assert np.array_equal(gradvar_rng(5, Sub.TRAIN, 7).integers(1000, size=8),
                          np.random.default_rng([5, 0, 7]).integers(1000, size=8))
    assert np.array_equal(gradvar_rng(5, Sub.VARIANCE, 9).integers(1000, size=8),
                          np.random.default_rng([5, 1, 9]).integers(1000, size=8))
    assert np.array_equal(gradvar_rng(5, Sub.SPLIT).permutation(50), np.random.default_rng([5, 3]).permutation(50))
    assert torch.equal(torch.rand(4, generator=gradvar_torch(5)), torch.rand(4, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(torch.rand(4, generator=gradvar_torch(5, baseline_nets=True)),
                       torch.rand(4, generator=torch.Generator().manual_seed(6)))


def test_on_eval_sees_every_evaluation_and_changes_nothing(data):
    spec = TrainSpec(estimator="leg", lr=3e-3, **SMALL)
    seen = []
    with_hook = train(spec, *data, on_eval=lambda model, it: seen.append((it, float(model.prior_logit.detach().sum()))))
    assert [it for it, _ in seen] == [15, 30]
    without = train(spec, *data)
    timing = ("seconds_per_iteration", "cpu_seconds_per_iteration")
    assert {k: v for k, v in with_hook.items() if k not in timing} == {k: v for k, v in without.items() if k not in timing}
