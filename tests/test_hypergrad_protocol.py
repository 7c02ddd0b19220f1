"""The bilevel optimiser's protocol options: rho relative to λ_max, θ reset per outer step, inner gradient norm."""

import io

import pytest
import torch

from raygen.errors import UserError
from raygen.hypergrad.bilevel import BilevelOptimizer
from raygen.hypergrad.hypergradient import hypergradient
from raygen.hypergrad.solvers import exact_ihvp
from tests.test_hypergrad_bilevel import TIMES, ridge_task

f64 = dict(dtype=torch.float64)


def ridge_hessian(task, log_lam):
    """The ridge inner Hessian XᵀX/n + λI, built densely from the task's inner loss."""
    w = task.params[0]
    return torch.autograd.functional.hessian(lambda t: task.inner_loss((t,), (torch.exp(log_lam),)), w)


def test_rho_relative_to_lambda_max_scales_rho_by_the_top_eigenvalue():
    task, _ = ridge_task()
    seen = []

    def spy(hvp, v, *, rho):  # records the rho it is called with; solves the damped system exactly
        seen.append(rho)
        return exact_ihvp(lambda u: hvp(u) + rho * u, v)

    opt = BilevelOptimizer(task, solver=spy, solver_kwargs={"rho": 0.01}, unroll=20, rho_scale="lambda_max",
                           power_iters=200, generator=torch.Generator().manual_seed(0))
    raw_before = opt.raw[0].detach().clone()
    record = opt.step()
    top = float(torch.linalg.eigvalsh(ridge_hessian(task, raw_before))[-1])
    assert abs(record["lambda_max"] - top) / top < 1e-8
    assert seen == [pytest.approx(0.01 * record["lambda_max"], rel=1e-12)]


def test_rho_relative_gives_the_hypergradient_of_the_damped_system_at_rho_times_lambda_max():
    task, _ = ridge_task()
    opt = BilevelOptimizer(task, solver="nystrom", solver_kwargs={"rank": 5, "rho": 0.1}, unroll=20,
                           rho_scale="lambda_max", power_iters=200, outer_optimizer="sgd", outer_lr=1.0,
                           outer_momentum=0.0, generator=torch.Generator().manual_seed(0))
    raw = opt.raw[0].detach().clone()
    opt.step()
    # rank 5 = d: column Nyström is exact, so the hypergradient is the one through (H + 0.1·λ_max·I)⁻¹
    shift = 0.1 * opt.lambda_max
    expected = hypergradient(opt.inner_loss, opt.outer_loss, opt.params, (raw,),
                             solver=lambda hvp, v: exact_ihvp(lambda u: hvp(u) + shift * u, v))
    assert torch.allclose(raw - opt.raw[0].detach(), expected[0], rtol=1e-9, atol=1e-12)


def test_rho_scale_leaves_solvers_without_rho_alone_and_rejects_bad_values():
    task, _ = ridge_task()
    opt = BilevelOptimizer(task, solver="cg", solver_kwargs={"iters": 5}, unroll=5, rho_scale="lambda_max")
    assert "lambda_max" not in opt.step()
    with pytest.raises(UserError, match="rho_scale"):
        BilevelOptimizer(task, solver="nystrom", solver_kwargs={"rank": 2, "rho": 0.1}, rho_scale="relative")


@pytest.mark.parametrize("solver, rho_scale", [("nystrom", "absolute"), ("nystrom_pcg", "absolute"),
                                               (lambda hvp, v, *, rho: v / rho, "lambda_max")])
def test_a_solver_that_draws_needs_a_generator_there_is_no_hidden_seed(solver, rho_scale):
    task, _ = ridge_task()
    with pytest.raises(UserError, match="pass a generator"):
        BilevelOptimizer(task, solver=solver, solver_kwargs={"rank": 2, "rho": 0.1, "iters": 5, "tol": 1e-6}
                         if solver == "nystrom_pcg" else {"rank": 2, "rho": 0.1} if solver == "nystrom" else {"rho": 0.1},
                         rho_scale=rho_scale)
    BilevelOptimizer(task, solver="cg", solver_kwargs={"iters": 5}, rho_scale="lambda_max")  # draws nothing: none needed


def test_inner_grad_norm_is_the_gradient_norm_at_the_hypergradient_point():
    task, _ = ridge_task()
    opt = BilevelOptimizer(task, solver="exact", unroll=7, inner_lr=0.1)
    record = opt.step()
    # after the outer step φ moved; the record's norm is the one at the φ the inner steps used
    w = opt.params[0].detach().clone().requires_grad_(True)
    g = torch.autograd.grad(task.inner_loss((w,), (torch.exp(torch.tensor(0.0, **f64)),)), w)[0]
    assert record["inner_grad_norm"] == pytest.approx(float(torch.linalg.vector_norm(g)), rel=1e-12)
    # more inner steps from the same start: closer to the inner optimum
    longer = BilevelOptimizer(task, solver="exact", unroll=200, inner_lr=0.1).step()
    assert longer["inner_grad_norm"] < 1e-3 * record["inner_grad_norm"]


def test_reset_inner_restarts_theta_and_the_inner_optimizer_each_outer_step():
    task, _ = ridge_task()
    # solver "none": φ stays fixed, so with a reset every outer step repeats the first exactly
    opt = BilevelOptimizer(task, solver="none", unroll=10, inner_momentum=0.9, reset_inner=True)
    first = opt.step()
    theta_first = opt.params[0].detach().clone()
    second = opt.step()
    assert torch.equal(opt.params[0].detach(), theta_first)
    assert first["inner_grad_norm"] == second["inner_grad_norm"]
    # without the reset the second outer step continues from θ (and its momentum) instead
    carried = BilevelOptimizer(task, solver="none", unroll=10, inner_momentum=0.9)
    assert carried.step()["inner_grad_norm"] == first["inner_grad_norm"]
    carried.step()
    assert not torch.allclose(carried.params[0].detach(), theta_first)


def test_resume_keeps_the_lambda_max_warm_start():
    make = lambda: BilevelOptimizer(ridge_task()[0], solver="nystrom", solver_kwargs={"rank": 3, "rho": 0.1},
                                    unroll=5, rho_scale="lambda_max", power_iters=2,
                                    generator=torch.Generator().manual_seed(4))
    straight = make()
    records = [straight.step() for _ in range(3)]
    first = make()
    first.step(), first.step()
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    resumed = make()
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    drop_time = lambda r: {k: v for k, v in r.items() if k not in TIMES}
    assert drop_time(resumed.step()) == drop_time(records[-1])
