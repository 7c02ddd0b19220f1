"""The bilevel optimiser: inner optimiser steps on theta, an outer step on phi every `unroll` steps.

Hyperparameters are optimised in an unconstrained raw space u with phi = constrain(u) (e.g.
softplus or exp keeps a weight decay positive); the hypergradient with respect to u follows by
the chain rule because the losses are evaluated at constrain(u). A hypergradient that is NaN/inf,
or a solver that reports divergence, is recorded in the step's record and the outer step is
skipped, never applied.

Sketch reuse: the sketched solvers (randomized Nyström, Nyström-PCG) keep their Nyström sketch
of the inner Hessian and refresh it every `sketch_every` outer steps (1: a fresh sketch every
step, exactly as without reuse). The inner Hessian moves slowly between outer steps; a stale
sketch biases randomized Nyström's answer but only slows Nyström-PCG, which always solves the
current system. Records count the HVPs spent on sketches and the HVPs that reuse saved.

Relative damping (`rho_scale="lambda_max"`): the solvers that take rho (Nyström, randomized
Nyström, Nyström-PCG) get rho·λ_max instead of rho, with λ_max the inner Hessian's top eigenvalue
estimated each outer step by `power_iters` power iterations warm-started from the previous step's
eigenvector. rho is then a property of the spectrum (rho = 1e-2: damping at 1 % of the top
curvature) rather than an absolute number whose meaning depends on the loss's scale; every record
reports the estimate. With an absolute rho ≫ λ_max, Nyström is nearly the scaled identity v/rho
and rho acts as an outer step size rather than as damping.

Protocols: by default θ carries over between outer steps (warm start, `unroll` more inner steps
each time). `reset_inner=True` is the reference library's protocol: θ and the inner optimiser's
state go back to the problem's initial values before every outer step, so each hypergradient is taken
after `unroll` steps from scratch. Either way the record's `inner_grad_norm` = ‖∇_θ f‖ at the θ the
hypergradient is taken at: implicit differentiation assumes it is 0.
"""

from __future__ import annotations

import math
import time

import torch

from raygen.errors import UserError
from raygen.hypergrad.hypergradient import RANDOMIZED, SKETCHED, Tensors, hypergradient, resolve_solver
from raygen.hypergrad.problem import Batches, BilevelProblem
from raygen.hypergrad.sketch import NystromSketch, nystrom_sketch
from raygen.hypergrad.solvers import SolverDivergence, lambda_max


def optimizer(name: str, tensors: list[torch.Tensor], lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(tensors, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(tensors, lr=lr)
    raise UserError(f"unknown optimizer {name!r}; valid: sgd, adam")


class BilevelOptimizer:
    """Runs a BilevelProblem: `step()` does `unroll` inner steps (one inner batch each) then one outer
    step (a fresh inner and outer batch for the hypergradient) and returns a record.

    solver: an IHVP solver name (see SOLVERS) or "none" (hyperparameters stay fixed: the baseline
    that only trains the inner model). `generator` drives the solver's randomness (Nyström's
    column choice, the sketches' test matrices, the λ_max power iteration's start) and is part of
    `state_dict` with the kept sketch, so a resumed run repeats the uninterrupted one; it is required
    exactly when something draws from it (no hidden default seed). `sketch_every` = m: sketched solvers refresh their
    sketch on outer steps 1, 1 + m, 1 + 2m, ... and reuse it in between.
    """

    def __init__(
        self,
        problem: BilevelProblem,
        *,
        solver: str,
        solver_kwargs: dict | None = None,
        unroll: int = 100,
        inner_lr: float = 0.1,
        inner_momentum: float = 0.0,
        inner_optimizer: str = "sgd",
        outer_lr: float = 1.0,
        outer_momentum: float = 0.9,
        outer_optimizer: str = "sgd",
        generator: torch.Generator | None = None,
        sketch_every: int = 1,
        rho_scale: str = "absolute",
        power_iters: int = 10,
        reset_inner: bool = False,
    ):
        if unroll < 1:
            raise UserError(f"unroll must be >= 1, got {unroll}")
        if sketch_every < 1:
            raise UserError(f"sketch_every must be >= 1 (1: a fresh sketch every outer step), got {sketch_every}")
        if rho_scale not in ("absolute", "lambda_max"):
            raise UserError(f"rho_scale must be 'absolute' or 'lambda_max', got {rho_scale!r}")
        if power_iters < 1:
            raise UserError(f"power_iters must be >= 1, got {power_iters}")
        self.problem = problem
        self.solver = solver
        self.solver_kwargs = dict(solver_kwargs or {})
        self.unroll = unroll
        self.params = [p.detach().clone().requires_grad_(True) for p in problem.params]
        self.raw = [h.detach().clone().requires_grad_(True) for h in problem.hparams]
        self.inner_batches = Batches(problem.inner_data, "inner_data")
        self.outer_batches = Batches(problem.outer_data, "outer_data")
        self.batches: tuple | None = None  # the (inner, outer) batches of the latest hypergradient
        self.inner_opt = optimizer(inner_optimizer, self.params, inner_lr, inner_momentum)
        self.outer_opt = optimizer(outer_optimizer, self.raw, outer_lr, outer_momentum)
        if generator is None and (solver in RANDOMIZED or (rho_scale == "lambda_max" and "rho" in (solver_kwargs or {}))):
            raise UserError(f"solver {solver!r} with rho_scale={rho_scale!r} draws random numbers: pass a generator "
                            "(e.g. raygen.seeds.torch_generator(seed, stream))")
        self.generator = generator
        self.outer_step = 0
        self.skipped = 0
        self.sketch_every = sketch_every
        self.sketch: NystromSketch | None = None
        self.sketch_hvps = 0  # HVPs spent on sketches so far
        self.sketch_hvps_saved = 0  # HVPs that reusing a kept sketch saved so far
        self.rho_scale = rho_scale
        self.power_iters = power_iters
        self.top_vector: torch.Tensor | None = None  # warm start of the next λ_max estimate
        self.lambda_max: float | None = None  # the last estimate
        self.reset_inner = reset_inner

    def _latest_batches(self) -> tuple:
        """The latest hypergradient's (inner, outer) batches; before the first step the first batches of
        lists (a loader is not iterated ahead: that would move its shuffling generator)."""
        if self.batches is not None:
            return self.batches

        def first(data):
            if data is None or isinstance(data, (list, tuple)):
                return None if data is None else data[0]
            raise UserError("the optimiser's losses are taken at the latest hypergradient's batches: call step() "
                            "first (the problem's data is a loader, not a list of batches)")

        return first(self.problem.inner_data), first(self.problem.outer_data)

    def inner_loss(self, theta: Tensors, u: Tensors) -> torch.Tensor:
        """f(θ, constrain(u)) on the latest hypergradient's inner batch."""
        return self.problem.inner_loss(theta, self.problem.constrain(tuple(u)), self._latest_batches()[0])

    def outer_loss(self, theta: Tensors, u: Tensors) -> torch.Tensor:
        """g(θ, constrain(u)) on the latest hypergradient's outer batch."""
        return self.problem.outer_loss(theta, self.problem.constrain(tuple(u)), self._latest_batches()[1])

    def hparams(self) -> Tensors:
        """The constrained hyperparameters phi."""
        with torch.no_grad():
            return self.problem.constrain(tuple(self.raw))

    def _inner_steps(self) -> tuple[float, float]:
        """(inner loss before the last step, ‖∇_θ f‖ after it on the hypergradient's inner batch) of
        this outer step's inner training; draws the hypergradient's batches."""
        u = tuple(h.detach() for h in self.raw)
        phi = self.problem.constrain(u)
        if self.reset_inner:
            with torch.no_grad():
                for p, p0 in zip(self.params, self.problem.params):
                    p.copy_(p0)
            self.inner_opt.state.clear()  # momentum / Adam moments belong to the discarded run
        for _ in range(self.unroll):
            self.inner_opt.zero_grad(set_to_none=True)
            loss = self.problem.inner_loss(tuple(self.params), phi, self.inner_batches.next())
            loss.backward()
            self.inner_opt.step()
        self.batches = (self.inner_batches.next(), self.outer_batches.next())
        grads = torch.autograd.grad(self.inner_loss(tuple(self.params), u), self.params)
        self.inner_opt.zero_grad(set_to_none=True)
        return float(loss.detach()), float(torch.sqrt(sum((g**2).sum() for g in grads)))

    def _solver(self):
        """The solver to call this outer step: sketched solvers get the kept (or a refreshed) sketch,
        and with rho_scale="lambda_max" the solvers taking rho get it scaled by λ_max."""
        solve = resolve_solver(self.solver)
        if self.solver in SKETCHED:
            solve = self._with_kept_sketch(solve)
        if self.rho_scale == "lambda_max" and "rho" in self.solver_kwargs:
            solve = self._with_relative_rho(solve)
        return solve

    def _with_relative_rho(self, solve):
        def relative_rho(hvp, v, *, rho: float, **kwargs):
            self.lambda_max, self.top_vector = lambda_max(
                hvp, v, iters=self.power_iters, generator=self.generator, start=self.top_vector
            )
            if not self.lambda_max > 0:
                raise SolverDivergence(f"λ_max estimate {self.lambda_max:.3g} <= 0: rho relative to it is undefined")
            return solve(hvp, v, rho=rho * self.lambda_max, **kwargs)

        return relative_rho

    def _with_kept_sketch(self, solve):
        def with_kept_sketch(hvp, v, *, rank: int, generator: torch.Generator, **kwargs):
            if self.sketch is None or self.outer_step % self.sketch_every == 0:
                self.sketch = nystrom_sketch(hvp, v, rank=rank, generator=generator)
                self.sketch_hvps += rank
            else:
                self.sketch_hvps_saved += rank
            return solve(hvp, v, rank=rank, generator=generator, sketch=self.sketch, **kwargs)

        return with_kept_sketch

    def _outer_step(self) -> tuple[float, float, str | None]:
        """(wall seconds, this thread's CPU seconds, skip reason or None) of one hypergradient step."""
        kwargs = dict(self.solver_kwargs)
        if self.solver in RANDOMIZED:
            kwargs["generator"] = self.generator
        start, cpu_start = time.perf_counter(), time.thread_time()
        elapsed = lambda: (time.perf_counter() - start, time.thread_time() - cpu_start)
        try:
            grads = hypergradient(
                self.inner_loss, self.outer_loss, self.params, self.raw, solver=self._solver(), **kwargs
            )
        except SolverDivergence as exc:
            return *elapsed(), str(exc)
        seconds, cpu_seconds = elapsed()
        if not all(torch.isfinite(g).all() for g in grads):
            return seconds, cpu_seconds, "non-finite hypergradient"
        self.outer_opt.zero_grad(set_to_none=True)
        for h, g in zip(self.raw, grads):
            h.grad = g.detach().clone()
        self.outer_opt.step()
        return seconds, cpu_seconds, None

    def step(self) -> dict:
        inner_loss, inner_grad_norm = self._inner_steps()
        if not math.isfinite(inner_loss):
            raise UserError(
                f"inner loss became {inner_loss} at outer step {self.outer_step + 1}; lower inner_lr or outer_lr"
            )
        record: dict = {"outer_step": self.outer_step + 1, "inner_loss": inner_loss, "inner_grad_norm": inner_grad_norm}
        if self.solver != "none":
            # CPU time stands for wall time on a quiet machine when the wall clock is shared
            seconds, cpu_seconds, skipped = self._outer_step()
            record["hypergrad_seconds"] = seconds
            record["hypergrad_cpu_seconds"] = cpu_seconds
            if skipped is not None:
                self.skipped += 1
                record["skipped_reason"] = skipped
        self.outer_step += 1
        record["skipped_steps"] = self.skipped
        if self.lambda_max is not None:
            record["lambda_max"] = self.lambda_max
        if self.solver in SKETCHED:
            record["sketch_hvps"] = self.sketch_hvps
            record["sketch_hvps_saved"] = self.sketch_hvps_saved
        with torch.no_grad():
            record.update(self.problem.evaluate(tuple(self.params), self.hparams()))
        return record

    def state_dict(self) -> dict:
        """Tensors, numbers and dicts of them only: loadable with `torch.load(weights_only=True)`."""
        sketch = self.sketch
        return {
            "params": [p.detach().clone() for p in self.params],
            "raw": [h.detach().clone() for h in self.raw],
            "inner_opt": self.inner_opt.state_dict(),
            "outer_opt": self.outer_opt.state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
            "outer_step": self.outer_step,
            "skipped": self.skipped,
            "sketch": None if sketch is None else {"U": sketch.U, "lam": sketch.lam, "dropped": sketch.dropped},
            "sketch_hvps": self.sketch_hvps,
            "sketch_hvps_saved": self.sketch_hvps_saved,
            "top_vector": self.top_vector,
            "lambda_max": self.lambda_max,
            "batches_drawn": [self.inner_batches.drawn, self.outer_batches.drawn],
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for p, s in zip(self.params, state["params"]):
                p.copy_(s)
            for h, s in zip(self.raw, state["raw"]):
                h.copy_(s)
        self.inner_opt.load_state_dict(state["inner_opt"])
        self.outer_opt.load_state_dict(state["outer_opt"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        self.outer_step = state["outer_step"]
        self.skipped = state["skipped"]
        self.sketch = None if state["sketch"] is None else NystromSketch(**state["sketch"])
        self.sketch_hvps = state["sketch_hvps"]
        self.sketch_hvps_saved = state["sketch_hvps_saved"]
        self.top_vector = state["top_vector"]
        self.lambda_max = state["lambda_max"]
        inner_drawn, outer_drawn = state["batches_drawn"]
        self.inner_batches.skip_to(inner_drawn)
        self.outer_batches.skip_to(outer_drawn)
        # the hypergradient batches are the last ones drawn (inner and outer losses see them)
        self.batches = (self.inner_batches.last, self.outer_batches.last) if self.outer_step else None
