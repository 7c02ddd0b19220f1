"""A user's own bilevel problem in `raygen tune` (`task: pkg.module:make_problem`): the ridge example
of jobs/ loaded by import path has the closed-form hypergradient; bounds, loaders and resume; one-line
refusals; the same problem through Tune on a real local Ray."""

import io
import json
import uuid
from pathlib import Path

import pytest
import torch

import raygen
from raygen.errors import UserError
from raygen.hypergrad import BilevelOptimizer, BilevelProblem
from raygen.hypergrad.tasks import TASKS as BUILT_IN, make_task
from raygen.imports import working_dirs
from raygen.jobs import load_job
from raygen.workloads.tune import TASKS, TuneHypergradConfig, run, solver_generator, task_generators

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "tune_ridge_problem.py"
f64 = dict(dtype=torch.float64)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A job's working directory (the process's, as for `raygen run`)."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def write_module(work: Path, text: str, prefix: str = "mod") -> str:
    """A module in the working directory under a unique name (Ray workers and sys.modules are reused)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    (work / f"{name}.py").write_text(text)
    return name


@pytest.fixture
def ridge(work):
    return write_module(work, EXAMPLE.read_text(), "ridge") + ":make_problem"


def load(spec: str, seed: int = 0, **options) -> BilevelProblem:
    return make_task(spec, **task_generators(seed), search=working_dirs(), **options)


@pytest.mark.parametrize("solver, kwargs, rel", [
    ("exact", {}, 1e-8),
    ("cg", {"iters": 8}, 1e-8),  # d = 8: CG is exact in d steps
    # the damped solvers at rank d and rho = 1e-6: they solve (H + rho I), 8e-7 off (CG at 4 iterations: 3e-3)
    ("nystrom", {"rank": 8, "rho": 1e-6}, 2e-6),
    ("randomized_nystrom", {"rank": 8, "rho": 1e-6}, 2e-6),
    ("nystrom_pcg", {"rank": 4, "rho": 1e-6, "iters": 50, "tol": 1e-12}, 2e-6),
    ("neumann", {"iters": 400, "alpha": 0.5}, 1e-8),  # converges: alpha < 2 / λ_max(H)
])
def test_own_ridge_problem_has_the_closed_form_hypergradient(ridge, solver, kwargs, rel):
    n, d, lam = 50, 8, 0.3
    problem = load(ridge, n=n, d=d, lam=lam)
    ((x, y),), ((xv, yv),) = problem.inner_data, problem.outer_data
    opt = BilevelOptimizer(problem, solver=solver, solver_kwargs=kwargs, unroll=300, inner_lr=0.5,
                           outer_optimizer="sgd", outer_lr=1.0, outer_momentum=0.0,
                           generator=solver_generator(0))
    u = opt.raw[0].detach().clone()
    assert float(problem.constrain((u,))[0]) == pytest.approx(lam, rel=1e-14)  # bounds (0, None): u = log λ
    # before the first step the optimiser's losses (benchmarks take them) are at the lists' first batches
    assert torch.equal(opt.inner_loss(problem.params, (u,)), problem.inner_loss(problem.params, opt.hparams(), (x, y)))
    record = opt.step()
    assert record["inner_grad_norm"] < 1e-12  # θ is the inner optimum: implicit differentiation is exact there
    # closed form: w(λ) = A⁻¹Xᵀy/n, A = XᵀX/n + λI; dw/dλ = −A⁻¹w; dg/du = λ·dg/dλ (u = log λ)
    A = x.T @ x / n + lam * torch.eye(d, **f64)
    w = torch.linalg.solve(A, x.T @ y / n)
    dg_dw = xv.T @ (xv @ w - yv) / n
    expected = lam * float(-dg_dw @ torch.linalg.solve(A, w))
    assert float(u - opt.raw[0].detach()) == pytest.approx(expected, rel=rel)  # SGD, lr 1: the step is −∇_u g
    assert record["val_loss"] == pytest.approx(float(((xv @ w - yv) ** 2).mean() / 2), rel=1e-10)
    # the black-box baselines' global hyperparameter is λ itself
    assert float(problem.constrain(problem.global_hparam.to_raw(0.7))[0]) == pytest.approx(0.7, rel=1e-14)


def test_minibatch_loaders_are_drawn_in_order_and_a_resumed_run_repeats_the_uninterrupted_one(ridge):
    def make():
        return BilevelOptimizer(load(ridge, n=40, d=5, batch_size=8), solver="cg", solver_kwargs={"iters": 5},
                                unroll=3, inner_lr=0.3, outer_lr=0.3)

    straight = make()
    with pytest.raises(UserError, match="call step"):  # a loader is not iterated ahead of the run
        straight.inner_loss(straight.problem.params, straight.problem.hparams)
    records = [straight.step() for _ in range(3)]
    times = ("hypergrad_seconds", "hypergrad_cpu_seconds")
    drop = lambda r: {k: v for k, v in r.items() if k not in times}
    first = make()
    first.step(), first.step()
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    assert first.state_dict()["batches_drawn"] == [2 * (3 + 1), 2]  # unroll + 1 inner batches per outer step
    resumed = make()
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert drop(resumed.step()) == drop(records[-1])
    # the minibatches really differ from the full batch
    full = BilevelOptimizer(load(ridge, n=40, d=5), solver="cg", solver_kwargs={"iters": 5}, unroll=3, inner_lr=0.3,
                            outer_lr=0.3)
    assert drop(full.step())["inner_loss"] != drop(records[0])["inner_loss"]


def _problem(**kwargs) -> BilevelProblem:
    loss = lambda theta, phi, batch: (theta[0] ** 2).sum() * phi[0]
    return BilevelProblem(**{"params": (torch.zeros(2, **f64),), "hparams": (torch.tensor(1.0, **f64),),
                             "inner_loss": loss, "outer_loss": loss, **kwargs})


@pytest.mark.parametrize("low, high, phi0", [(0.0, None, 0.3), (None, 2.0, -1.0), (1.0, 3.0, 2.5), (None, None, -4.0)])
def test_bounds_keep_phi_in_its_box(low, high, phi0):
    problem = _problem(hparams=(torch.tensor(phi0, **f64),), bounds=[(low, high)])
    assert float(problem.constrain(problem.hparams)[0]) == pytest.approx(phi0, rel=1e-12)
    for u in (-30.0, 30.0):
        phi = float(problem.constrain((torch.tensor(u, **f64),))[0])
        assert (low is None or phi >= low) and (high is None or phi <= high)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hparams=(torch.tensor(-1.0, **f64),), bounds=[(0.0, None)]), "on or outside its bounds"),
    (dict(bounds=[(0.0, None)], constrain=lambda u: u), "not both"),
    (dict(bounds=[(0.0, None), (0.0, 1.0)]), "2 .low, high. pairs for 1 hparams"),
    (dict(bounds=[(1.0, 1.0)]), "is empty"),
    (dict(params=[1.0, 2.0]), "params must be a non-empty tuple of floating-point tensors"),
    (dict(inner_loss="f"), "inner_loss must be a function"),
    (dict(inner_data=[]), "inner_data gives no batches"),
    (dict(evaluate=lambda theta, phi: {"loss": 1.0}), "evaluate.* must return a dict with a finite number 'val_loss'"),
])
def test_a_problem_not_following_the_protocol_is_one_line(kwargs, match):
    with pytest.raises(UserError, match=match) as exc:
        _problem(**kwargs).check()
    assert "\n" not in str(exc.value)


FACTORIES = """
import torch
from raygen.hypergrad import BilevelProblem

def not_a_problem(data, init, device):
    return {"params": torch.zeros(2)}

def vector_loss(data, init, device):
    loss = lambda theta, phi, batch: theta[0] * phi[0]
    return BilevelProblem(params=(torch.zeros(2),), hparams=(torch.ones(()),), inner_loss=loss, outer_loss=loss)

def no_global(data, init, device):
    loss = lambda theta, phi, batch: (theta[0] ** 2).sum() * phi[0]
    return BilevelProblem(params=(torch.zeros(2),), hparams=(torch.ones(()),), inner_loss=loss, outer_loss=loss)

def no_options(data, init, device):
    return no_global(data, init, device)
"""


def test_a_module_or_factory_that_fails_is_one_line(work):
    mod = write_module(work, FACTORIES)
    broken = write_module(work, "raise RuntimeError('boom at import')\n", "broken")
    cases = [
        (f"{broken}:make_problem", "importing 'broken_.*' .* failed: RuntimeError: boom at import"),
        ("no_such_module_xyz:make_problem", "cannot import 'no_such_module_xyz'"),
        (f"{mod}:missing", "has no function 'missing'"),
        (f"{mod}:not_a_problem", "returned a dict, not a raygen.hypergrad.BilevelProblem"),
        (f"{mod}:vector_loss", r"inner_loss\(θ, φ, batch\) must return a scalar tensor, got Tensor\[2\]"),
    ]
    for spec, match in cases:
        with pytest.raises(UserError, match=match) as exc:
            load(spec).check()
        assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="config key 'task_options': .* cannot be called .*lam=...") as exc:
        load(f"{mod}:no_options", lam=1.0)
    # black-box baselines need a global hyperparameter: refused before Ray starts
    with pytest.raises(UserError, match="config key 'baselines': .* has no global_hparam"):
        run(TuneHypergradConfig(task=f"{mod}:no_global", baselines=["random"]))


def test_task_is_a_built_in_or_an_import_path():
    assert set(TASKS) == set(BUILT_IN)
    assert load_job("jobs/tune_own_problem.yaml").config.task == "jobs.tune_ridge_problem:make_problem"
    with pytest.raises(UserError, match="config key 'task': unknown task 'ridge'; valid: weight_decay"):
        load_job("jobs/tune_own_problem.yaml", ["task=ridge"])
    with pytest.raises(UserError, match="config key 'task_options': only for a task given by import path"):
        load_job("jobs/tune_own_problem.yaml", ["task=weight_decay"])
    with pytest.raises(UserError, match="gpus_per_trial"):
        load_job("jobs/tune_own_problem.yaml", ["gpus_per_trial=-1"])


@pytest.mark.ray
def test_own_problem_runs_through_raygen_tune_on_ray(ridge, tmp_path, ray_local):
    """Trials (Ray workers started elsewhere) find the module in the driver's working directory; the
    exact-solver trial is the in-process optimisation step for step. (One Tuner: the baselines' Tuner
    runs the same trainable; their global hyperparameter is checked in-process.)"""
    options = {"n": 50, "d": 8, "lam": 0.3}
    result = raygen.run("tune", name="own", storage_path=str(tmp_path / "runs"), task=ridge, task_options=options,
                        solvers=["exact"], outer_lrs=[0.3], unrolls=[30],
                        seeds=[0], num_samples=1, max_outer_steps=2, scheduler="fifo", inner_lr=0.5, baselines=[])
    report = result.report
    assert report["device"] == "cpu" and report["task_info"] == {"n": 50, "d": 8, "batch_size": 0}
    assert set(report["methods"]) == {"exact"}
    trials = json.loads((Path(result.run_dir) / "trials.json").read_text())
    assert all(t["error"] is None and [h["outer_step"] for h in t["history"]] == [1, 2] for t in trials)
    config = result.config
    opt = BilevelOptimizer(load(ridge, **options), solver="exact", unroll=30, inner_lr=0.5, outer_lr=0.3,
                           outer_momentum=config.outer_momentum, outer_optimizer=config.outer_optimizer,
                           generator=solver_generator(0), rho_scale=config.rho_scale, power_iters=config.power_iters)
    expected = [opt.step()["val_loss"] for _ in range(2)]
    (exact,) = [t for t in trials if t["method"] == "exact"]
    assert [h["val_loss"] for h in exact["history"]] == expected
