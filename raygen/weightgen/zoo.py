"""Model-zoo members: the classifier, the tasks derived from one labelled image set, and training.

The network is raygen's own `ConvClassifier` (a small CNN; `arch` is its constructor spec). Two
ways to collect a zoo (Wang et al. 2024, "Neural Network Diffusion", Sec. 3; Soro et al. 2025,
"Diffusion-based Neural Network Weights Generation", Sec. 4):

- trajectory (p-diff): train a base model on the task, then keep training only a parameter
  subset (`head` or the `last2` layers; `all` also works) and save one checkpoint every
  `steps_per_checkpoint` SGD steps. The rest of the network stays at the base values and the
  network runs in eval mode throughout, so the subset vector alone determines the model.
- tasks (D2NWG): many tasks derived from the data (ordered class subsets relabelled 0..c-1, fixed
  pixel permutations, rotations), each trained to convergence with several seeds.

Task definitions are deterministic functions of (family, run seed, task id), so two task ids that
happen to define the same task are detected by comparing definitions. A member's training is a
function of its seeds only: the same member trained anywhere gives the same bits (single thread).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raygen.errors import UserError
from raygen.models.classifier import ConvClassifier
from raygen.weightgen.params import ParamLayout, flatten

FAMILIES = ("digits", "subset", "permutation", "rotation")
SUBSETS = ("all", "head", "last2")
SPLIT = (0.55, 0.17)  # train and validation fractions; the rest is the test set


def build_classifier(arch: dict[str, Any]) -> ConvClassifier:
    return ConvClassifier(**arch)


def subset_names(model: ConvClassifier, subset: str) -> list[str]:
    """The generated parameters: all, the head only, or the last two linear layers (p-diff's
    'last layers' choice; this network has no normalisation layers)."""
    names = [n for n, _ in model.named_parameters()]
    if subset == "all":
        return names
    if subset == "head":
        return [n for n in names if n.startswith("head.")]
    if subset == "last2":
        return names[-4:]
    raise UserError(f"param_subset must be one of {', '.join(SUBSETS)}, got {subset!r}")


def make_task(family: str, task_id: int, seed: int, classes_per_task: int = 5) -> dict[str, Any]:
    """The definition of task `task_id` of a family (a JSON-able dict; equal dicts = same task)."""
    rng = np.random.default_rng([seed, task_id, 7])
    if family == "digits":
        return {"family": "digits"}
    if family == "subset":
        return {"family": "subset", "classes": rng.permutation(10)[:classes_per_task].tolist()}
    if family == "permutation":
        return {"family": "permutation", "perm": rng.permutation(64).tolist()}
    if family == "rotation":
        return {"family": "rotation", "angle": float(rng.uniform(-180.0, 180.0))}
    raise UserError(f"task_family must be one of {', '.join(FAMILIES)}, got {family!r}")


def task_classes(task: dict[str, Any]) -> int:
    return len(task["classes"]) if task["family"] == "subset" else 10


def apply_task(task: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's view of images x [N, C, H, W] and labels y [N]."""
    family = task["family"]
    if family == "digits":
        return x, y
    if family == "subset":
        classes = torch.tensor(task["classes"])
        keep = (y[:, None] == classes[None]).any(1)
        relabel = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        relabel[classes] = torch.arange(len(classes))
        return x[keep], relabel[y[keep]]
    if family == "permutation":
        perm = torch.tensor(task["perm"])
        if perm.numel() != x[0].numel():
            raise UserError(f"permutation tasks are defined for {perm.numel()}-pixel images; these have {x[0].numel()}")
        return x.flatten(1)[:, perm].reshape(x.shape), y
    if family == "rotation":
        a = math.radians(task["angle"])
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
        grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False), y
    raise UserError(f"unknown task family {family!r}")


def split(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A fixed train / val / test split of the whole data set (before any task is applied)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(SPLIT[0] * len(x)), int(SPLIT[1] * len(x))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: (x[i], y[i]) for k, i in parts.items()}


def task_splits(task: dict[str, Any], splits: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k: apply_task(task, *v) for k, v in splits.items()}


def support_set(x: torch.Tensor, y: torch.Tensor, num_classes: int, shots: int) -> torch.Tensor:
    """The first `shots` training images of each class in label order, flattened: [C, shots, H*W*C]."""
    rows = []
    for c in range(num_classes):
        xc = x[y == c][:shots]
        if len(xc) < shots:
            raise UserError(f"class {c} of a task has {len(xc)} training images; lower support_shots below {shots}")
        rows.append(xc.flatten(1))
    return torch.stack(rows)


def init_model(arch: dict[str, Any], seed: int) -> ConvClassifier:
    """A freshly initialised classifier; the initialisation depends only on `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_classifier(arch)


def fit(model: torch.nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
        batch_size: int, generator: torch.Generator, optimizer: str = "adam",
        every: int = 0, callback: Callable[[int], None] | None = None) -> None:
    """Minibatch training of the named parameters only (cross-entropy; batches drawn with
    replacement-free epochs from `generator`). `callback(step)` runs after every `every` steps."""
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in set(names))
    chosen = [params[n] for n in names]
    opt = (torch.optim.Adam(chosen, lr=lr) if optimizer == "adam"
           else torch.optim.SGD(chosen, lr=lr, momentum=0.9))
    order, pos = torch.randperm(len(x), generator=generator), 0
    batch_size = min(batch_size, len(x))
    for step in range(1, steps + 1):
        if pos + batch_size > len(x):
            order, pos = torch.randperm(len(x), generator=generator), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback is not None and every and step % every == 0:
            callback(step)
    for p in params.values():
        p.requires_grad_(True)


def train_member(arch: dict[str, Any], data: tuple[torch.Tensor, torch.Tensor], *, init_seed: int, order_seed: int,
                 steps: int, lr: float, batch_size: int) -> ConvClassifier:
    """A tasks-mode member: every parameter trained from the init of `init_seed` (Adam)."""
    model = init_model(arch, init_seed)
    fit(model, subset_names(model, "all"), *data, steps=steps, lr=lr, batch_size=batch_size,
        generator=torch.Generator().manual_seed(order_seed))
    return model.eval()


def trajectory(base: ConvClassifier, layout: ParamLayout, data: tuple[torch.Tensor, torch.Tensor], *,
               order_seed: int, checkpoints: int, steps_per_checkpoint: int, lr: float,
               batch_size: int) -> torch.Tensor:
    """p-diff's collection: continue training only layout's tensors of (a copy of) the base model
    with SGD + momentum, network in eval mode; theta after every `steps_per_checkpoint` steps: [K, P]."""
    model = copy.deepcopy(base).eval()
    thetas: list[torch.Tensor] = []
    fit(model, layout.names, *data, steps=checkpoints * steps_per_checkpoint, lr=lr, batch_size=batch_size,
        generator=torch.Generator().manual_seed(order_seed), optimizer="sgd", every=steps_per_checkpoint,
        callback=lambda step: thetas.append(flatten(dict(model.named_parameters()), layout).clone()))
    return torch.stack(thetas)
