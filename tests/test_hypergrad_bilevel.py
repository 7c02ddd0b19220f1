"""The bilevel optimiser (exact optimum on ridge, skipped bad steps, resume) and the tasks."""

import io
import math

import pytest
import torch

from raygen.hypergrad.bilevel import BilevelOptimizer
from raygen.hypergrad.hypergradient import SOLVERS, hypergradient
from raygen.hypergrad.problem import BilevelProblem
from raygen.hypergrad.solvers import exact_ihvp
from raygen.hypergrad.tasks import make_task
from raygen.workloads.tune import task_generators

f64 = dict(dtype=torch.float64)
TIMES = ("hypergrad_seconds", "hypergrad_cpu_seconds")  # the only record entries that differ between equal runs


def ridge_task(seed=0, n=40, n_val=40, d=5, init_log_lam=0.0):
    g = torch.Generator().manual_seed(seed)
    X, Xv = torch.randn(n, d, generator=g, **f64), torch.randn(n_val, d, generator=g, **f64)
    w_true = torch.randn(d, generator=g, **f64)
    y = X @ w_true + 2.0 * torch.randn(n, generator=g, **f64)
    yv = Xv @ w_true + 2.0 * torch.randn(n_val, generator=g, **f64)

    def inner(params, phi, batch=None):  # full-batch: no loaders, batch is None
        return ((X @ params[0] - y) ** 2).mean() / 2 + 0.5 * phi[0] * (params[0] ** 2).sum()

    def outer(params, phi, batch=None):
        return ((Xv @ params[0] - yv) ** 2).mean() / 2

    def val_loss_at(lam):  # closed-form inner optimum
        w = torch.linalg.solve(X.T @ X / n + lam * torch.eye(d, **f64), X.T @ y / n)
        return float(outer((w,), None))

    task = BilevelProblem(
        name="ridge",
        params=(torch.zeros(d, **f64),),
        hparams=(torch.tensor(init_log_lam, **f64),),
        inner_loss=inner,
        outer_loss=outer,
        evaluate=lambda params, phi: {"val_loss": float(outer(params, phi))},
        constrain=lambda raw: (torch.exp(raw[0]),),
    )
    return task, val_loss_at


def golden_min(f, lo, hi, iters=100):
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(iters):
        c, d = b - r * (b - a), a + r * (b - a)
        a, b = (a, d) if f(c) < f(d) else (c, b)
    return (a + b) / 2


def test_bilevel_reaches_closed_form_optimal_ridge_penalty():
    task, val_loss_at = ridge_task()
    log_lam_star = golden_min(lambda t: val_loss_at(math.exp(t)), -8.0, 4.0)
    opt = BilevelOptimizer(task, solver="exact", unroll=30, inner_lr=0.5, outer_lr=2.0, outer_momentum=0.5)
    for _ in range(60):
        record = opt.step()
    assert record["skipped_steps"] == 0
    log_lam = float(opt.raw[0].detach())
    assert abs(log_lam - log_lam_star) < 1e-6, (log_lam, log_lam_star)
    assert opt.hparams()[0] > 0  # constrained through exp


def test_nonfinite_hypergradient_is_reported_and_skipped():
    task, _ = ridge_task()
    nan_solver = lambda hvp, v: torch.full_like(v, float("nan"))
    opt = BilevelOptimizer(task, solver=nan_solver, unroll=5)
    before = opt.raw[0].detach().clone()
    record = opt.step()
    assert record["skipped_reason"] == "non-finite hypergradient"
    assert record["skipped_steps"] == 1
    assert torch.equal(opt.raw[0].detach(), before)


def test_neumann_divergence_is_reported_and_skipped():
    task, _ = ridge_task()
    opt = BilevelOptimizer(task, solver="neumann", solver_kwargs={"iters": 30, "alpha": 10.0}, unroll=5)
    before = opt.raw[0].detach().clone()
    record = opt.step()
    assert "Neumann series diverges" in record["skipped_reason"]
    assert torch.equal(opt.raw[0].detach(), before)


def test_resume_from_state_dict_repeats_uninterrupted_run():
    make = lambda: BilevelOptimizer(
        make_task("weight_decay", **task_generators(3), n=200, d=20),
        solver="nystrom",
        solver_kwargs={"rank": 5, "rho": 0.1},
        unroll=10,
        generator=torch.Generator().manual_seed(11),
    )
    straight = make()
    records = [straight.step() for _ in range(4)]
    first = make()
    first.step(), first.step()
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    later = [resumed.step() for _ in range(2)]
    drop_time = lambda r: {k: v for k, v in r.items() if k not in TIMES}
    assert [drop_time(r) for r in later] == [drop_time(r) for r in records[2:]]
    assert all(torch.equal(a, b) for a, b in zip(resumed.raw, straight.raw))


@pytest.mark.parametrize("name,kwargs", [("weight_decay", {"n": 200}), ("reweight", {}), ("distill", {}), ("reweight", {"per": "example", "hidden": 8})])
def test_tasks_are_seeded_and_one_outer_step_is_finite(name, kwargs):
    def first_record(seed):
        task = make_task(name, **task_generators(seed), **kwargs)
        opt = BilevelOptimizer(task, solver="nystrom", solver_kwargs={"rank": 5, "rho": 0.1}, unroll=5,
                               generator=torch.Generator().manual_seed(0))
        record = opt.step()
        for key in TIMES:
            record.pop(key)
        assert not torch.equal(opt.raw[0], task.hparams[0])  # the outer step moved phi
        return record

    record = first_record(0)
    assert record == first_record(0)
    assert record != first_record(1)
    assert record["skipped_steps"] == 0
    assert all(math.isfinite(record[k]) for k in ("val_loss", "val_acc", "test_loss", "test_acc", "inner_loss"))


def test_reweight_imbalance_and_disjoint_splits():
    task = make_task("reweight", **task_generators(0), imbalance=100.0)
    counts = task.info["class_counts"]
    assert counts[0] == 100 and counts[-1] == 1 and counts == sorted(counts, reverse=True)
    assert task.info["n_train"] == sum(counts)
    # black-box parameterisation: beta = 1 gives weights proportional to 1 / count, mean 1
    (w,) = task.constrain(task.global_hparam.to_raw(1.0))
    inv = 1 / torch.tensor(counts, dtype=torch.float32)
    assert torch.allclose(w, 10 * inv / inv.sum(), rtol=1e-5)


def _sketched_optimizer(solver, sketch_every=1, seed=0):
    return BilevelOptimizer(
        make_task("weight_decay", **task_generators(3), n=200, d=20),
        solver=solver,
        solver_kwargs={"rank": 5, "rho": 0.1, **({"iters": 30, "tol": 1e-6} if solver == "nystrom_pcg" else {})},
        unroll=10,
        generator=torch.Generator().manual_seed(seed),
        sketch_every=sketch_every,
    )


@pytest.mark.parametrize("name", ["randomized_nystrom", "nystrom_pcg"])
def test_sketch_reuse_every_step_equals_no_reuse_bit_for_bit(name):
    reused = _sketched_optimizer(name, sketch_every=1)
    # no reuse: the plain solver draws its own sketch from an identically seeded generator on every call
    g = torch.Generator().manual_seed(0)
    plain = BilevelOptimizer(
        make_task("weight_decay", **task_generators(3), n=200, d=20),
        solver=lambda hvp, v: SOLVERS[name](hvp, v, generator=g, **reused.solver_kwargs),
        unroll=10,
    )
    for _ in range(4):
        a, b = reused.step(), plain.step()
        assert a["val_loss"] == b["val_loss"] and a["inner_loss"] == b["inner_loss"]
        assert all(torch.equal(x, y) for x, y in zip(reused.raw, plain.raw))
    assert a["sketch_hvps"] == 4 * 5 and a["sketch_hvps_saved"] == 0


def test_sketch_reuse_counts_saved_products_and_pcg_stays_exact():
    opt = _sketched_optimizer("nystrom_pcg", sketch_every=3)
    records = [opt.step() for _ in range(5)]
    # fresh sketches on outer steps 1 and 4, kept on 2, 3 and 5
    assert [r["sketch_hvps"] for r in records] == [5, 5, 5, 10, 10]
    assert [r["sketch_hvps_saved"] for r in records] == [0, 5, 10, 10, 15]
    # a stale sketch only preconditions: PCG still solves the current damped system
    kept = opt.sketch
    assert kept is not None
    stale = hypergradient(opt.inner_loss, opt.outer_loss, opt.params, opt.raw, solver="nystrom_pcg",
                          rank=5, rho=0.1, iters=200, tol=1e-7, sketch=kept)
    exact = hypergradient(opt.inner_loss, opt.outer_loss, opt.params, opt.raw,
                          solver=lambda hvp, v: exact_ihvp(lambda u: hvp(u) + 0.1 * u, v))
    assert torch.linalg.vector_norm(stale[0] - exact[0]) / torch.linalg.vector_norm(exact[0]) < 1e-5


def test_resume_keeps_the_sketch_and_its_counters():
    straight = _sketched_optimizer("nystrom_pcg", sketch_every=2)
    records = [straight.step() for _ in range(4)]
    first = _sketched_optimizer("nystrom_pcg", sketch_every=2)
    for _ in range(3):
        first.step()
    resumed = _sketched_optimizer("nystrom_pcg", sketch_every=2)
    saved = io.BytesIO()  # through the file format `raygen tune` checkpoints use: plain tensors, no pickled objects
    torch.save(first.state_dict(), saved)
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    last = resumed.step()
    drop_time = lambda r: {k: v for k, v in r.items() if k not in TIMES}
    assert drop_time(last) == drop_time(records[-1])
    assert all(torch.equal(a, b) for a, b in zip(resumed.raw, straight.raw))
