"""The `BilevelProblem` protocol: what `raygen tune` optimises, the built-in tasks and a user's own alike.

    θ*(φ) = argmin_θ f(θ, φ)   (inner),   minimise over φ: g(θ*(φ), φ)   (outer)

A problem gives:

- `params`: θ₀, a tuple of tensors. For an `nn.Module` use `raygen.hypergrad.functional_module(model)`,
  which returns (θ₀, apply) with `apply(θ, *inputs)` running the module at θ.
- `inner_loss(θ, φ, batch)` = f and `outer_loss(θ, φ, batch)` = g: scalar tensors, pure functions of
  θ and φ (tuples of tensors) and of the batch (`torch.func` differentiates them twice).
- `inner_data`, `outer_data`: where the batches come from: anything `iter()` gives batches of (a list
  of batches, a `torch.utils.data.DataLoader`), started over when it ends; one inner batch per inner
  step, and a fresh inner and outer batch for each hypergradient. None: full-batch, batch is None.
  A resumed run skips the batches already drawn, so a loader shuffling with a seeded generator
  gives the same batches as the uninterrupted run (unless something else iterates the same loader,
  such as the default `evaluate` below: give a shuffling `outer_data` its own `evaluate`).
- The hyperparameters φ, in one of two forms:
  `hparams` = φ₀ with `bounds` = one (low, high) per hyperparameter (None: unbounded on that side;
  the outer optimiser moves an unconstrained u with φ = low + exp(u), high − exp(u),
  low + (high − low)·sigmoid(u) or u), or `hparams` = the raw u₀ with `constrain(u) -> φ` for a
  reparameterisation a box cannot express (per-class weights on a simplex, φ = C·softmax(u)).
  Neither: φ = u, unbounded.
- `evaluate(θ, φ) -> {"val_loss": ..., ...}` (optional): what Tune reports and ranks trials by;
  `val_acc`, `test_loss` and `test_acc` are reported when present. Default: `val_loss` = the mean
  outer loss over one pass of `outer_data`.
- `global_hparam` (optional): one scalar that sets every hyperparameter, what the black-box
  baselines (random search, Optuna) tune instead; without it, run with `baselines: []`.
- `name`, `info`: for reports (`info`: facts about the instance, JSON-serialisable).

`raygen tune --set task=pkg.module:make_problem` calls `make_problem(data, init, device, **task_options)`
with two `torch.Generator`s from the run seed's streams (`data` for data and splits, `init` for θ₀)
and the torch device the trial computes on; it must return a `BilevelProblem` with its tensors there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from raygen.errors import UserError
from raygen.hypergrad.hypergradient import Tensors

Constrain = Callable[[Tensors], Tensors]
BatchLoss = Callable[[Tensors, Tensors, Any], torch.Tensor]
Bound = tuple[float | None, float | None]


def identity(raw: Tensors) -> Tensors:
    return raw


@dataclass
class GlobalHparam:
    """One scalar that sets all of a problem's hyperparameters: what black-box search tunes instead."""

    name: str
    low: float
    high: float
    log: bool
    to_raw: Callable[[float], Tensors]  # value -> raw hparams (the optimised u)


def _unconstrained(phi: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    """u with _constrained(u) = phi; phi must lie strictly inside the bounds."""
    if (low is not None and not bool((phi > low).all())) or (high is not None and not bool((phi < high).all())):
        raise ValueError("initial value outside its bounds")
    if low is not None and high is not None:
        return torch.logit((phi - low) / (high - low))
    if low is not None:
        return torch.log(phi - low)
    if high is not None:
        return torch.log(high - phi)
    return phi.clone()


def _constrained(u: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    if low is not None and high is not None:
        return low + (high - low) * torch.sigmoid(u)
    if low is not None:
        return low + torch.exp(u)
    if high is not None:
        return high - torch.exp(u)
    return u


def _box(bounds: Sequence[Bound]) -> Constrain:
    return lambda raw: tuple(_constrained(u, lo, hi) for u, (lo, hi) in zip(raw, bounds))


def _problem_error(message: str) -> UserError:
    return UserError(f"BilevelProblem: {message} (see raygen.hypergrad.problem for the protocol)")


def _tensors(value: Any, key: str, what: str) -> Tensors:
    if isinstance(value, torch.Tensor):
        value = (value,)
    if not (isinstance(value, (tuple, list)) and value
            and all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in value)):
        raise _problem_error(f"{key} must be a non-empty tuple of floating-point tensors ({what}), got "
                             f"{type(value).__name__}")
    return tuple(value)


@dataclass
class BilevelProblem:
    """One bilevel problem (the module docstring has the protocol). After construction `hparams`
    holds the raw u₀ the outer optimiser starts from and `constrain` maps u to φ."""

    params: Tensors
    hparams: Tensors
    inner_loss: BatchLoss
    outer_loss: BatchLoss
    inner_data: Iterable | None = None
    outer_data: Iterable | None = None
    bounds: Sequence[Bound | None] | None = None
    constrain: Constrain | None = None
    evaluate: Callable[[Tensors, Tensors], dict[str, float]] | None = None
    global_hparam: GlobalHparam | None = None
    name: str = "problem"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.params = _tensors(self.params, "params", "θ₀")
        self.hparams = _tensors(self.hparams, "hparams", "φ₀, or u₀ with constrain")
        for key in ("inner_loss", "outer_loss"):
            if not callable(getattr(self, key)):
                raise _problem_error(f"{key} must be a function (θ, φ, batch) -> scalar tensor")
        if self.evaluate is not None and not callable(self.evaluate):
            raise _problem_error("evaluate must be a function (θ, φ) -> dict of metrics with 'val_loss'")
        if self.bounds is not None:
            if self.constrain is not None:
                raise _problem_error("give bounds (hparams = φ₀) or constrain (hparams = u₀), not both")
            if len(self.bounds) != len(self.hparams):
                raise _problem_error(f"bounds lists {len(self.bounds)} (low, high) pairs for "
                                     f"{len(self.hparams)} hparams")
            bounds = [b if b is not None else (None, None) for b in self.bounds]
            for i, (lo, hi) in enumerate(bounds):
                if lo is not None and hi is not None and not lo < hi:
                    raise _problem_error(f"bounds[{i}] = ({lo}, {hi}) is empty: need low < high")
            try:
                self.hparams = tuple(_unconstrained(h, lo, hi) for h, (lo, hi) in zip(self.hparams, bounds))
            except ValueError:
                raise _problem_error("an initial hyperparameter value lies on or outside its bounds; start "
                                     "strictly inside them") from None
            self.constrain, self.bounds = _box(bounds), None  # from here on the raw form, as with constrain
        elif self.constrain is None:
            self.constrain = identity
        elif not callable(self.constrain):
            raise _problem_error("constrain must be a function u -> φ (tuples of tensors)")
        if self.evaluate is None:
            self.evaluate = self._mean_outer_loss

    def _mean_outer_loss(self, params: Tensors, phi: Tensors) -> dict[str, float]:
        batches = [None] if self.outer_data is None else self.outer_data
        losses = [float(self.outer_loss(params, phi, batch)) for batch in batches]
        return {"val_loss": sum(losses) / len(losses)}

    def check(self) -> None:
        """f and g are scalars and evaluate reports val_loss at θ₀, φ₀: a broken problem fails in the
        driver, on one line, before any trial starts."""
        phi = self.constrain(self.hparams)
        with torch.no_grad():
            for key, data in (("inner_loss", self.inner_data), ("outer_loss", self.outer_data)):
                batch = None if data is None else next(iter(data), None)
                if data is not None and batch is None:
                    raise _problem_error(f"{key.replace('loss', 'data')} gives no batches")
                value = getattr(self, key)(self.params, phi, batch)
                if not (isinstance(value, torch.Tensor) and value.numel() == 1):
                    raise _problem_error(f"{key}(θ, φ, batch) must return a scalar tensor, got "
                                         f"{type(value).__name__}{list(getattr(value, 'shape', []))}")
            metrics = self.evaluate(self.params, phi)
        if not (isinstance(metrics, dict) and isinstance(metrics.get("val_loss"), (int, float))
                and math.isfinite(metrics["val_loss"])):
            raise _problem_error(f"evaluate(θ, φ) must return a dict with a finite number 'val_loss', got {metrics!r}")


class Batches:
    """Batches from a re-iterable (a list, a DataLoader), started over at its end; None without data.
    `drawn` counts them, so a resumed run can skip to where it was (`skip_to`)."""

    def __init__(self, data: Iterable | None, key: str):
        self.data, self.key, self.drawn, self._it = data, key, 0, None
        self.last: Any = None  # the latest batch

    def next(self) -> Any:
        if self.data is None:
            return None
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.data)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self.drawn += 1
            self.last = batch
            return batch
        raise _problem_error(f"{self.key} gives no batches")

    def skip_to(self, drawn: int) -> None:
        self._it, self.drawn, self.last = None, 0, None
        for _ in range(drawn):
            self.next()
