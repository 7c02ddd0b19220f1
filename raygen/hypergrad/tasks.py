"""The built-in bilevel HPO tasks: `BilevelProblem`s made exactly as a user's `make_problem` makes
one, from two generators (`data` draws the data, split and any data-based initialisation, `init` the
model's initial weights; workloads derive them from named streams: `raygen.workloads.tune.task_generators`)
and the device to build on. Each is full-batch: its loaders hold one batch, the whole split.

1. `weight_decay`: per-feature weight decay on synthetic logistic regression (n = 1000, d = 100,
   the reference library's example), phi = exp(u) > 0.
2. `reweight`: per-class (or per-example) loss weights on class-imbalanced digits against a
   balanced validation set; weights = C·softmax(u) so they stay positive with mean 1 (a common
   scale would only rescale the weight decay).
3. `distill`: dataset distillation on digits: a few synthetic images per class are the
   hyperparameters; a model trained on them alone is scored on the real training images.

Digits come from scikit-learn (`load_digits`, shipped with the package: nothing is downloaded).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F

from raygen.errors import UserError
from raygen.hypergrad.hypergradient import Tensors, functional_module
from raygen.hypergrad.problem import BilevelProblem, GlobalHparam
from raygen.imports import is_import_path, load_object

Device = torch.device | str


def _classification_eval(
    predict: Callable[[Tensors, torch.Tensor], torch.Tensor], splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> Callable[[Tensors, Tensors], dict[str, float]]:
    def evaluate(params: Tensors, hparams: Tensors) -> dict[str, float]:
        out = {}
        for split, (x, y) in splits.items():
            logits = predict(params, x)
            if logits.shape[-1] == 1:  # binary: one logit
                out[f"{split}_loss"] = float(F.binary_cross_entropy_with_logits(logits[:, 0], y))
                out[f"{split}_acc"] = float(((logits[:, 0] > 0).float() == y).float().mean())
            else:
                out[f"{split}_loss"] = float(F.cross_entropy(logits, y))
                out[f"{split}_acc"] = float((logits.argmax(-1) == y).float().mean())
        return out

    return evaluate


def weight_decay(data: torch.Generator, init: torch.Generator, device: Device = "cpu", *, n: int = 1000,
                 d: int = 100, init_decay: float = 1e-2) -> BilevelProblem:
    """Per-feature L2 penalty phi_i·w_i²/2 on logistic regression; 10 of d features matter (zero init: `init` unused)."""
    g = data
    w_true = torch.zeros(d)
    w_true[torch.randperm(d, generator=g)[:10]] = 3 * torch.randn(10, generator=g)

    def sample(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(m, d, generator=g)
        y = torch.bernoulli(torch.sigmoid(x @ w_true), generator=g)
        return x, y

    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = [tuple(t.to(device) for t in sample(n)) for _ in range(3)]
    predict = lambda params, x: (x @ params[0] + params[1]).unsqueeze(-1)

    def inner(params: Tensors, phi: Tensors, batch) -> torch.Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(predict(params, x)[:, 0], y) + 0.5 * (phi[0] * params[0] ** 2).sum()

    def outer(params: Tensors, phi: Tensors, batch) -> torch.Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(predict(params, x)[:, 0], y)

    # raw log-decays (constrain, not bounds): the published runs started from exactly these values
    log_decays = lambda v: (torch.full((d,), math.log(v), device=device),)
    return BilevelProblem(
        name="weight_decay",
        params=(torch.zeros(d, device=device), torch.zeros(1, device=device)),
        hparams=log_decays(init_decay),
        inner_loss=inner,
        outer_loss=outer,
        inner_data=[(x_tr, y_tr)],
        outer_data=[(x_val, y_val)],
        evaluate=_classification_eval(predict, {"val": (x_val, y_val), "test": (x_te, y_te)}),
        constrain=lambda raw: (torch.exp(raw[0]),),
        global_hparam=GlobalHparam("weight_decay", 1e-4, 1.0, log=True, to_raw=log_decays),
        info={"n_train": n, "d": d},
    )


def _digits_splits(g: torch.Generator, val_per_class: int, test_per_class: int):
    """Standardised digits split per class into (pool, val, test) by permutations drawn from `g`."""
    from sklearn.datasets import load_digits  # ships with scikit-learn

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    pool, val, test = [], [], []
    for c in range(10):
        idx = torch.nonzero(y == c)[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)]
        val.append(idx[:val_per_class])
        test.append(idx[val_per_class : val_per_class + test_per_class])
        pool.append(idx[val_per_class + test_per_class :])
    mean, std = x.mean(0), x.std(0) + 1.0  # +1: several pixels are (almost) constant
    x = (x - mean) / std
    return x, y, pool, torch.cat(val), torch.cat(test)


def _classifier(init: torch.Generator, hidden: int,
                device: Device) -> tuple[Tensors, Callable[[Tensors, torch.Tensor], torch.Tensor]]:
    """A linear softmax classifier on the 64 pixels (hidden = 0, zero init) or a one-hidden-layer tanh MLP."""
    if hidden == 0:
        return (torch.zeros(64, 10, device=device), torch.zeros(10, device=device)), lambda p, x: x @ p[0] + p[1]
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10))
    with torch.no_grad():
        for p in model.parameters():  # seeded init, never the global RNG
            p.copy_(torch.randn(p.shape, generator=init) / math.sqrt(p.shape[-1]))
    return functional_module(model.to(device))


def reweight(
    data: torch.Generator,
    init: torch.Generator,
    device: Device = "cpu",
    *,
    imbalance: float = 50.0,
    per: str = "class",
    hidden: int = 0,
    weight_decay: float = 1e-3,
    n_max: int = 100,
    val_per_class: int = 20,
    test_per_class: int = 50,
) -> BilevelProblem:
    """Class c keeps round(n_max·imbalance^(−c/9)) training images (>= 1); val and test are balanced."""
    if imbalance < 1:
        raise UserError(f"imbalance must be >= 1 (ratio of largest to smallest class), got {imbalance}")
    if per not in ("class", "example"):
        raise UserError(f"reweight 'per' must be 'class' or 'example', got {per!r}")
    x, y, pool, val, test = _digits_splits(data, val_per_class, test_per_class)
    x, y = x.to(device), y.to(device)
    counts = [max(1, round(n_max * imbalance ** (-c / 9))) for c in range(10)]
    train = torch.cat([pool[c][: counts[c]] for c in range(10)])
    x_tr, y_tr = x[train], y[train]
    params, predict = _classifier(init, hidden, device)
    n_weights = 10 if per == "class" else len(train)
    log_counts = torch.log(torch.tensor(counts, dtype=torch.float32)).to(device)

    def inner(params: Tensors, phi: Tensors, batch) -> torch.Tensor:  # batch: the whole training set
        x_b, y_b = batch
        losses = F.cross_entropy(predict(params, x_b), y_b, reduction="none")
        weights = phi[0][y_b] if per == "class" else phi[0]
        return (weights * losses).mean() + 0.5 * weight_decay * sum((p**2).sum() for p in params)

    def outer(params: Tensors, phi: Tensors, batch) -> torch.Tensor:
        x_b, y_b = batch
        return F.cross_entropy(predict(params, x_b), y_b)

    def class_power(beta: float) -> Tensors:
        # weight_c ∝ count_c^(−beta): beta = 0 uniform, beta = 1 inverse class frequency
        per_class = -beta * log_counts
        return (per_class if per == "class" else per_class[y_tr],)

    return BilevelProblem(
        name="reweight",
        params=params,
        hparams=(torch.zeros(n_weights, device=device),),
        inner_loss=inner,
        outer_loss=outer,
        inner_data=[(x_tr, y_tr)],
        outer_data=[(x[val], y[val])],
        evaluate=_classification_eval(predict, {"val": (x[val], y[val]), "test": (x[test], y[test])}),
        constrain=lambda raw: (n_weights * torch.softmax(raw[0], 0),),  # a simplex: no box bounds express it
        global_hparam=GlobalHparam("class_weight_power", 0.0, 1.0, log=False, to_raw=class_power),
        info={"class_counts": counts, "n_train": len(train), "imbalance": imbalance, "per": per},
    )


def distill(data: torch.Generator, init: torch.Generator, device: Device = "cpu", *, images_per_class: int = 1,
            weight_decay: float = 1e-2, val_per_class: int = 20, test_per_class: int = 50) -> BilevelProblem:
    """Learn images_per_class synthetic images per class (initialised from real ones drawn by `data`);
    inner: fit them, outer: loss on the real training set."""
    x, y, pool, val, test = _digits_splits(data, val_per_class, test_per_class)
    train = torch.cat(pool)
    start = torch.cat([pool[c][torch.randperm(len(pool[c]), generator=data)[:images_per_class]] for c in range(10)])
    x, y = x.to(device), y.to(device)
    y_syn = torch.arange(10, device=device).repeat_interleave(images_per_class)
    params, predict = _classifier(init, 0, device)

    def inner(params: Tensors, phi: Tensors, batch) -> torch.Tensor:  # no data: the inputs are phi
        return F.cross_entropy(predict(params, phi[0]), y_syn) + 0.5 * weight_decay * (params[0] ** 2).sum()

    def outer(params: Tensors, phi: Tensors, batch) -> torch.Tensor:
        x_b, y_b = batch
        return F.cross_entropy(predict(params, x_b), y_b)

    return BilevelProblem(
        name="distill",
        params=params,
        hparams=(x[start].clone(),),
        inner_loss=inner,
        outer_loss=outer,
        outer_data=[(x[train], y[train])],
        evaluate=_classification_eval(predict, {"val": (x[val], y[val]), "test": (x[test], y[test])}),
        info={"images_per_class": images_per_class, "n_real": len(train)},
    )


TASKS: dict[str, Callable[..., BilevelProblem]] = {"weight_decay": weight_decay, "reweight": reweight,
                                                   "distill": distill}


def make_task(name: str, *, data: torch.Generator, init: torch.Generator, device: Device = "cpu",
              search: tuple[str, ...] = (), **kwargs) -> BilevelProblem:
    """A built-in task by name, or a user's by import path `pkg.module:make_problem` (looked for in
    `search`, then the installed packages), called the same way: factory(data, init, device, **kwargs)."""
    if name in TASKS:
        return TASKS[name](data, init, device, **kwargs)
    if not is_import_path(name):
        raise UserError(f"config key 'task': unknown task {name!r}; valid: {', '.join(TASKS)} or an import path "
                        "pkg.module:make_problem")
    factory = load_object(name, key="task", returns="a raygen.hypergrad.BilevelProblem", search=search)
    try:
        inspect.signature(factory).bind(data, init, device, **kwargs)
    except TypeError as exc:
        raise UserError(f"config key 'task_options': {name} cannot be called as make_problem(data, init, device"
                        f"{''.join(f', {k}=...' for k in kwargs)}): {exc}") from None
    problem = factory(data, init, device, **kwargs)
    if not isinstance(problem, BilevelProblem):
        raise UserError(f"config key 'task': {name} returned a {type(problem).__name__}, not a "
                        "raygen.hypergrad.BilevelProblem (see raygen.hypergrad.problem for the protocol)")
    if problem.name == BilevelProblem.name:  # the default: name it after the factory for reports
        problem.name = name
    return problem
