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

The data (`load_source`): the built-in digits, an image folder or Parquet (the readers of
`raygen.data`), labels mapped to 0..C-1 in sorted order. The families above are derived from the
source's C classes and its image shape; a Parquet source may instead carry a task column, whose
sorted distinct values are tasks 0..T-1 (family `column`: the task's rows, its labels relabelled
0..c-1 in sorted order). Task definitions are deterministic functions of (family, run seed, task
id, data), so two task ids that happen to define the same task are detected by comparing
definitions. A member's training is a function of its seeds only: the same member trained
anywhere gives the same bits (single thread).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raygen.errors import UserError
from raygen.models.classifier import ConvClassifier, carried_batches, train_cross_entropy
from raygen.seeds import Stream, numpy_rng, torch_generator
from raygen.models.params import ParamLayout, flatten

FAMILIES = ("digits", "subset", "permutation", "rotation")  # "digits": the whole source as one task
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


def make_task(family: str, task_id: int, seed: int, *, num_classes: int, numel: int,
              classes_per_task: int = 5) -> dict[str, Any]:
    """The definition of task `task_id` of a family over a source of `num_classes` classes and
    `numel` values per image (a JSON-able dict; equal dicts = same task)."""
    rng = numpy_rng(seed, Stream.TASK_DEF, task_id)
    if family == "digits":
        return {"family": "digits", "num_classes": num_classes}
    if family == "subset":
        if classes_per_task > num_classes:
            raise UserError(f"classes_per_task is {classes_per_task} but the data has {num_classes} classes; "
                            f"lower classes_per_task to at most {num_classes}")
        return {"family": "subset", "classes": rng.permutation(num_classes)[:classes_per_task].tolist()}
    if family == "permutation":
        return {"family": "permutation", "perm": rng.permutation(numel).tolist(), "num_classes": num_classes}
    if family == "rotation":
        return {"family": "rotation", "angle": float(rng.uniform(-180.0, 180.0)), "num_classes": num_classes}
    raise UserError(f"task_family must be one of {', '.join(FAMILIES)}, got {family!r}")


def task_classes(task: dict[str, Any]) -> int:
    return len(task["classes"]) if "classes" in task else task["num_classes"]


def _keep_relabel(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, classes: list[int]):
    """Rows `keep`, labels `classes[i]` -> i."""
    relabel = torch.full((max(int(y.max()), max(classes)) + 1,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return x[keep], relabel[y[keep]]


def apply_task(task: dict[str, Any], x: torch.Tensor, y: torch.Tensor,
               t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's view of images x [N, C, H, W] and labels y [N] (t [N]: task-column indices)."""
    family = task["family"]
    if family == "digits":
        return x, y
    if family == "subset":
        keep = (y[:, None] == torch.tensor(task["classes"])[None]).any(1)
        return _keep_relabel(x, y, keep, task["classes"])
    if family == "column":
        return _keep_relabel(x, y, t == task["index"], task["classes"])
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


def split(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None, *,
          generator: torch.Generator | None = None) -> dict[str, tuple[torch.Tensor, ...]]:
    """A train / val / test split of the whole data set (before any task is applied); each split is
    (x, y) or, with task-column indices t, (x, y, t). Default order: stream ZOO_SPLIT, the same
    for every run seed (a zoo's members and its report must agree on it)."""
    generator = generator or torch_generator(0, Stream.ZOO_SPLIT)
    order = torch.randperm(len(x), generator=generator)
    n_train, n_val = int(SPLIT[0] * len(x)), int(SPLIT[1] * len(x))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: tuple(v[i] for v in (x, y, t) if v is not None) for k, i in parts.items()}


def task_splits(task: dict[str, Any], splits: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k: apply_task(task, *v) for k, v in splits.items()}


# ---------------------------------------------------------------------- the data source


@dataclasses.dataclass(frozen=True)
class Source:
    """A zoo's data in memory: images [N, C, H, W], labels 0..C-1 [N], task-column indices [N] or
    None, and `info` (what the zoo metadata records: the spec it was read with, classes, shape,
    task values)."""

    images: torch.Tensor
    labels: torch.Tensor
    tasks: torch.Tensor | None
    info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.info["class_names"])


def source_spec(source: str, *, image_column: str = "image", label_column: str = "label", task_column: str = "",
                image_size: int = 0) -> dict[str, Any]:
    """How to read a zoo's data (stored in the zoo metadata, so later stages read the same data)."""
    return {"source": source, "image_column": image_column, "label_column": label_column,
            "task_column": task_column, "image_size": image_size}


def load_source(spec: dict[str, Any]) -> Source:
    """The data of a source spec (cached per process: actors and the report read it repeatedly)."""
    return _load_source(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=2)
def _load_source(key: str) -> Source:
    from raygen.data.arrays import read_arrays

    spec = json.loads(key)
    extra = {"task_column": spec["task_column"]} if spec["task_column"] else {}
    images, labels, class_names, columns = read_arrays(
        spec["source"], image_column=spec["image_column"], label_column=spec["label_column"], extra_columns=extra,
        image_size=spec["image_size"] or None)
    if len(class_names) < 2:
        raise UserError(f"data source {spec['source']!r} has {len(class_names)} class; a classifier zoo needs >= 2")
    tasks, task_values = None, None
    if extra:
        task_values, tasks = np.unique(columns["task_column"], return_inverse=True)
        tasks = torch.from_numpy(tasks.astype(np.int64))
        task_values = task_values.tolist()
    info = {**spec, "class_names": class_names,
            "shape": list(images.shape[1:]), "rows": len(images), "task_values": task_values}
    return Source(torch.from_numpy(images), torch.from_numpy(labels), tasks, info)


def source_splits(spec: dict[str, Any]) -> dict[str, tuple[torch.Tensor, ...]]:
    data = load_source(spec)
    return split(data.images, data.labels, data.tasks)


def zoo_splits(metadata: dict[str, Any]) -> dict[str, tuple[torch.Tensor, ...]]:
    """The splits of a zoo's data; a zoo written before sources existed (no `source`) is digits."""
    return source_splits(metadata.get("source") or source_spec("digits"))


def define_tasks(data: Source, family: str, task_ids: Sequence[int], seed: int,
                 classes_per_task: int) -> dict[int, dict[str, Any]]:
    """Task id -> definition over `data`; with a task column, task i is its i-th sorted value
    (`family` is ignored). Every task must have the same number of classes (one architecture)."""
    if data.tasks is None:
        numel = int(np.prod(data.info["shape"]))
        defs = {t: make_task(family, t, seed, num_classes=data.num_classes, numel=numel,
                             classes_per_task=classes_per_task) for t in task_ids}
    else:
        values = data.info["task_values"]
        missing = [t for t in task_ids if not 0 <= t < len(values)]
        if missing:
            raise UserError(f"task {missing[0]} is not in the data: task column {data.info['task_column']!r} of "
                            f"{data.info['source']!r} has {len(values)} distinct values (task ids 0..{len(values) - 1}); "
                            "choose zoo_tasks / heldout_tasks within them")
        defs = {t: {"family": "column", "index": t, "value": values[t],
                    "classes": torch.unique(data.labels[data.tasks == t]).tolist()} for t in task_ids}
    counts = {t: task_classes(d) for t, d in defs.items()}
    if len(set(counts.values())) > 1:
        (a, ca), (b, cb) = sorted(counts.items(), key=lambda kv: kv[1])[::len(counts) - 1]
        raise UserError(f"tasks {a} and {b} have {ca} and {cb} classes; a zoo has one architecture, so every task "
                        "needs the same number of classes")
    if min(counts.values(), default=2) < 2:
        t = min(counts, key=counts.get)
        raise UserError(f"task {t} has {counts[t]} class; every task needs at least 2")
    return defs


# ---------------------------------------------------------------------- members


def support_split(x: torch.Tensor, y: torch.Tensor, num_classes: int, shots: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The support set as a labelled split, in label order: the first `shots` images of each class,
    or, given a generator, `shots` of each class drawn without replacement (D2NWG's re-drawn sets)."""
    idx = [torch.nonzero(y == c)[:, 0] for c in range(num_classes)]
    for c, i in enumerate(idx):
        if len(i) < shots:
            raise UserError(f"class {c} of a task has {len(i)} training images; lower support_shots below {shots}")
    if generator is not None:
        idx = [i[torch.randperm(len(i), generator=generator)] for i in idx]
    idx = torch.cat([i[:shots] for i in idx])
    return x[idx], y[idx]


def support_set(x: torch.Tensor, y: torch.Tensor, num_classes: int, shots: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The support set as the set encoder reads it, flattened per class: [C, shots, H*W*C]."""
    return support_split(x, y, num_classes, shots, generator)[0].flatten(1).reshape(num_classes, shots, -1)


def base_from(model: ConvClassifier, metadata: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The fixed part of a functional call: the zoo's base weights (trajectory) or the model's own."""
    from raygen.models.params import base_state, unflatten

    base = base_state(model)
    if metadata.get("base") is not None:
        base.update(unflatten(torch.tensor(metadata["base"], dtype=torch.float32), ParamLayout.of(model)))
    return base


def member_layout(arch: dict[str, Any], subset: str) -> ParamLayout:
    """The layout of the generated parameters: `subset` of the classifier `arch`."""
    model = init_model(arch, 0)  # seeded: building it must not move the global RNG
    return ParamLayout.of(model, subset_names(model, subset))


def init_model(arch: dict[str, Any], seed: int) -> ConvClassifier:
    """A freshly initialised classifier; the initialisation depends only on `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_classifier(arch)


OPTIMIZERS = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),  # weight decay 0.01, as p-diff's AdamW
}


def fit(model: torch.nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
        batch_size: int, generator: torch.Generator, optimizer: str = "adam",
        every: int = 0, callback: Callable[[int], None] | None = None) -> None:
    """Minibatch training of the named parameters only (cross-entropy; batches from replacement-free
    epochs drawn from `generator`). `callback(step)` runs after every `every` steps."""
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in set(names))
    chosen = [params[n] for n in names]
    opt = OPTIMIZERS[optimizer](chosen, lr)

    def after_step(step: int) -> None:
        if callback is not None and every and step % every == 0:
            callback(step)

    train_cross_entropy(model, opt, x, y, carried_batches(len(x), batch_size, steps, generator), after_step)
    for p in params.values():
        p.requires_grad_(True)


def train_member(arch: dict[str, Any], data: tuple[torch.Tensor, torch.Tensor], *, init_seed: int,
                 order: torch.Generator, steps: int, lr: float, batch_size: int, device="cpu") -> ConvClassifier:
    """A tasks-mode member: every parameter trained from the init of `init_seed` (Adam), batches
    drawn from `order`, on `data`'s `device`. (Module init draws torch's global RNG: `init_model`
    forks it under a seed, on the CPU, so a member starts from the same weights on any device.)"""
    model = init_model(arch, init_seed).to(device)
    fit(model, subset_names(model, "all"), *data, steps=steps, lr=lr, batch_size=batch_size, generator=order)
    return model.eval()


def trajectory(base: ConvClassifier, layout: ParamLayout, data: tuple[torch.Tensor, torch.Tensor], *,
               order: torch.Generator, checkpoints: int, steps_per_checkpoint: int, lr: float,
               batch_size: int, optimizer: str = "sgd") -> torch.Tensor:
    """p-diff's collection: continue training only layout's tensors of (a copy of) the base model,
    network in eval mode; theta after every `steps_per_checkpoint` steps: [K, P]. `optimizer`:
    "sgd" (momentum 0.9) gives a smooth path; "adamw" at a high lr a noisy one, p-diff's own regime
    (its checkpoints scatter around a point whose average can beat the best of them)."""
    model = copy.deepcopy(base).eval()
    thetas: list[torch.Tensor] = []
    fit(model, layout.names, *data, steps=checkpoints * steps_per_checkpoint, lr=lr, batch_size=batch_size,
        generator=order, optimizer=optimizer, every=steps_per_checkpoint,
        callback=lambda step: thetas.append(flatten(dict(model.named_parameters()), layout).clone()))
    return torch.stack(thetas)
