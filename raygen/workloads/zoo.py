"""`raygen zoo`: a model zoo trained on Ray, the first stage of weight generation (`raygen weightgen`).

Members are (task, seed, checkpoint) rows: a job is (task, seed), either a p-diff trajectory of K
checkpoints (`mode: trajectory`) or one D2NWG member trained to convergence (`mode: tasks`); see
`raygen.weightgen.zoo` for the tasks, the data sources and member training. Jobs are trained as
Ray tasks (`raygen.fanout`), single-threaded, one part per fixed chunk of jobs, so a retried or
re-run chunk rewrites the same part and the zoo is bit-identical for any number of workers
(`num_actors`).

The run directory `<storage_path>/<name>/`:

    parts/            the zoo (`raygen.weightgen.store`, exactly once, resumable): `model_id,
                      task_id, seed, step, params` (fixed-size float32 list), `val_acc, test_acc`;
                      architecture, parameter layout, base weights, task definitions and the data
                      source in each part's metadata.
    report.json/md    members, parameters, per-task test accuracy (mean / min / max, %).
    accuracy_hist.png histogram of the members' test accuracies.

A re-run with the same settings trains only missing or damaged parts (a finished zoo: none);
other settings are refused by the run directory. `raygen weightgen` runs this workload as its zoo
stage in `<its run dir>/zoo/`; `raygen.weightgen.store.read_zoo` reads a zoo run directory or its
`parts/`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import numpy as np

from raygen import device, fanout, plots
from raygen.config import Config, bounded, check
from raygen.seeds import Stream, stream_seed, torch_generator
from raygen.threads import torch_threads, use_one_thread
from raygen.weightgen.store import COLUMNS, ID_COLUMN, PARTS, read_zoo


@dataclasses.dataclass
class ZooConfig(Config):
    RESUME_FREE = frozenset({"num_actors", "gpus_per_member"})

    name: str = "zoo_digits"
    # data: "digits" (built in), an image folder (root/<class>/<image>) or Parquet, local or a URI
    source: str = "digits"
    image_column: str = "image"  # Parquet: encoded image bytes or [C, H, W] / [H, W] tensors
    label_column: str = "label"
    task_column: str = ""  # Parquet: its sorted distinct values are the tasks 0..T-1
    image_size: int = bounded(0, ge=0)  # 0: as stored (all images one size); N: resize to N x N
    # tasks and members
    mode: Literal["trajectory", "tasks"] = "trajectory"
    task_family: Literal["digits", "subset", "permutation", "rotation"] = "digits"  # digits: the whole source
    zoo_tasks: int = bounded(1, ge=1)  # task ids 0..zoo_tasks-1 form the zoo
    classes_per_task: int = bounded(5, ge=2)  # subset family
    seeds: int = bounded(1, ge=1)  # jobs per task: trajectories (trajectory) or members (tasks)
    width: int = bounded(4, ge=1)  # ConvClassifier width / feature_dim
    feature_dim: int = bounded(16, ge=1)
    param_subset: Literal["all", "head", "last2"] = "head"
    member_init: Literal["seed", "shared"] = "seed"  # tasks: init per member seed, or one shared init
    member_steps: int = bounded(400, ge=1)  # Adam steps of a base model / tasks member
    member_lr: float = bounded(0.01, gt=0)
    member_batch: int = bounded(64, ge=1)
    checkpoints: int = bounded(200, ge=1)  # trajectory: K checkpoints per trajectory
    steps_per_checkpoint: int = bounded(1, ge=1)
    trajectory_lr: float = bounded(0.01, gt=0)
    # sgd (momentum 0.9): a smooth path; adamw at a high lr: p-diff's noisy regime
    trajectory_optimizer: Literal["sgd", "adamw"] = "sgd"
    jobs_per_part: int = bounded(1, ge=1)
    num_actors: int = bounded(2, ge=1)
    gpus_per_member: float = bounded(0.0, ge=0)  # per zoo worker; fractions share a GPU (raygen.device)

    def validate(self) -> None:
        super().validate()
        check(bool(self.source), "source", "must be 'digits', an image folder or a Parquet path")
        if self.mode == "trajectory":
            check(self.zoo_tasks == 1, "zoo_tasks", "trajectory mode collects one task (zoo_tasks: 1); use mode: tasks")
        check(not self.task_column or self.task_family == "digits", "task_family",
              f"task_column {self.task_column!r} defines the tasks itself; leave task_family unset")

    def source_spec(self) -> dict[str, Any]:
        from raygen.weightgen.zoo import source_spec

        return source_spec(self.source, image_column=self.image_column, label_column=self.label_column,
                           task_column=self.task_column, image_size=self.image_size)

    def arch(self, data_shape: list[int], num_classes: int) -> dict[str, int]:
        return dict(in_channels=data_shape[0], num_classes=num_classes, width=self.width, feature_dim=self.feature_dim)

    @property
    def rows_per_job(self) -> int:
        return self.checkpoints if self.mode == "trajectory" else 1

    @property
    def jobs(self) -> int:
        return self.zoo_tasks * self.seeds

    def job(self, j: int) -> tuple[int, int]:
        """(task id, seed index) of zoo job j."""
        return divmod(j, self.seeds)

    def chunks(self):
        from raygen.parts import Chunks

        return Chunks(self.jobs * self.rows_per_job, self.rows_per_job * self.jobs_per_part)


CONFIG = ZooConfig


def stage_config(config: ZooConfig, storage_path: str, name: str = "zoo") -> ZooConfig:
    """The zoo part of a config that extends ZooConfig (weightgen), as a zoo run `<storage_path>/<name>`."""
    keys = {f.name for f in dataclasses.fields(ZooConfig)}
    return ZooConfig.from_dict({**{k: getattr(config, k) for k in keys}, "name": name, "storage_path": storage_path})


def zoo_tasks(config: ZooConfig, data) -> dict[int, dict]:
    from raygen.weightgen.zoo import define_tasks

    return define_tasks(data, config.task_family, range(config.zoo_tasks), config.seed, config.classes_per_task)


def zoo_layout(config: ZooConfig, arch: dict[str, int]):
    """The generated parameters: `param_subset` of a trajectory, every parameter of a tasks member."""
    from raygen.weightgen.zoo import member_layout

    return member_layout(arch, config.param_subset if config.mode == "trajectory" else "all")


def base_model(config: ZooConfig, splits: dict, task: dict, arch: dict[str, int]):
    """Trajectory mode's base: all parameters trained on the task (init and data order from the run seed)."""
    from raygen.weightgen.zoo import task_splits, train_member

    train = task_splits(task, splits)["train"]
    return train_member(arch, train, init_seed=stream_seed(config.seed, Stream.ZOO_BASE_INIT),
                        order=torch_generator(config.seed, Stream.ZOO_BASE_ORDER),
                        steps=config.member_steps, lr=config.member_lr, batch_size=config.member_batch)


# ====================================================================== parts on Ray


class ZooWorker:
    """A chunk worker (`raygen.fanout`): trains a chunk's jobs (single-threaded) into its rows."""

    def __init__(self, config: dict, metadata: dict[str, Any]):

        from raygen.models.params import ParamLayout
        from raygen.weightgen.zoo import base_from, build_classifier, zoo_splits

        use_one_thread()
        self.cfg = ZooConfig.from_dict(config)
        self.chunks = self.cfg.chunks()
        self.metadata = metadata
        self.layout = ParamLayout.from_dict(metadata["layout"])
        self.tasks = {int(t): d for t, d in metadata["tasks"].items()}
        self.splits = zoo_splits(metadata)
        self.device = device.device_for("gpus_per_member", self.cfg.gpus_per_member)
        self.model = build_classifier(metadata["arch"]).eval()
        self.model.load_state_dict(base_from(self.model, metadata))  # trajectory: the base model
        self.model.to(self.device)

    def _splits(self, task_id: int) -> dict:
        """The task's splits on this worker's device (tasks are applied on the CPU, where they were defined)."""
        from raygen.weightgen.zoo import task_splits

        return {k: tuple(t.to(self.device) for t in v) for k, v in task_splits(self.tasks[task_id], self.splits).items()}

    def _job(self, j: int):
        """(thetas [rows, P], steps [rows]) of zoo job j."""
        from raygen.models.params import flatten
        from raygen.weightgen.zoo import train_member, trajectory

        cfg = self.cfg
        task_id, s = cfg.job(j)
        train = self._splits(task_id)["train"]
        order = torch_generator(cfg.seed, Stream.MEMBER_ORDER, task_id, s)
        if cfg.mode == "trajectory":
            thetas = trajectory(self.model, self.layout, train, order=order, checkpoints=cfg.checkpoints,
                                steps_per_checkpoint=cfg.steps_per_checkpoint, lr=cfg.trajectory_lr,
                                batch_size=cfg.member_batch, optimizer=cfg.trajectory_optimizer)
            return thetas, (np.arange(cfg.checkpoints) + 1) * cfg.steps_per_checkpoint
        init_seed = cfg.seed if cfg.member_init == "shared" else stream_seed(cfg.seed, Stream.MEMBER_INIT, task_id, s)
        model = train_member(self.metadata["arch"], train, init_seed=init_seed, order=order,
                             steps=cfg.member_steps, lr=cfg.member_lr, batch_size=cfg.member_batch,
                             device=self.device)
        return flatten(dict(model.named_parameters()), self.layout)[None], np.asarray([cfg.member_steps])

    def __call__(self, chunk: int):
        import torch

        from raygen.weightgen.evaluate import accuracies
        from raygen.weightgen.store import params_table

        cols: dict[str, list] = {k: [] for k in COLUMNS}
        for j in sorted({int(i) // self.cfg.rows_per_job for i in self.chunks.ids(chunk)}):
            thetas, steps = self._job(j)
            task_id, s = self.cfg.job(j)
            splits = self._splits(task_id)
            acc = accuracies(self.model, self.layout, thetas, {"val": splits["val"], "test": splits["test"]})
            cols["model_id"] += list(j * self.cfg.rows_per_job + np.arange(len(thetas)))
            cols["task_id"] += [task_id] * len(thetas)
            cols["seed"] += [s] * len(thetas)
            cols["step"] += steps.tolist()
            cols["params"].append(thetas.to(torch.float32).cpu().numpy())
            cols["val_acc"] += acc["val"].tolist()
            cols["test_acc"] += acc["test"].tolist()
        return params_table(cols)


def collect(config: ZooConfig, run_dir, data, tasks: dict[int, dict]) -> dict[str, Any]:
    """The zoo's parts (only missing or damaged chunks are trained)."""
    import torch

    from raygen import runtime, storage
    from raygen.parts import PartStore
    from raygen.models.params import ParamLayout, flatten
    from raygen.weightgen.zoo import split, task_classes

    store = PartStore(run_dir.child(PARTS), id_column=ID_COLUMN)
    chunks = config.chunks()
    start = time.perf_counter()
    scan = store.scan(chunks)
    pending = scan.pending
    if not pending:
        print(f"zoo: all {chunks.count} parts ({chunks.n} members) are in {storage.display(store.uri)}; "
              "reusing them, nothing to train")
        return {"uri": store.loc.uri, "members": chunks.n, "parts": chunks.count, "written": 0,
                "seconds": time.perf_counter() - start, "device": store.metadata().get("device", "cpu")}
    runtime.check_fits({"CPU": 1, "GPU": config.gpus_per_member}, "gpus_per_member")
    where = device.probe("gpus_per_member", 1, config.gpus_per_member)
    arch = config.arch(data.info["shape"], task_classes(tasks[0]))
    base = None
    if config.mode == "trajectory":
        with torch.random.fork_rng(), torch_threads(1):
            model = base_model(config, split(data.images, data.labels, data.tasks), tasks[0], arch)
        base = flatten(dict(model.named_parameters()), ParamLayout.of(model)).tolist()
    layout = zoo_layout(config, arch)
    metadata = {"mode": config.mode, "arch": arch, "layout": layout.to_dict(), "base": base,
                "tasks": {str(t): d for t, d in tasks.items()}, "param_subset": config.param_subset,
                "source": data.info, "task_family": config.task_family,
                "classes_per_task": config.classes_per_task, "seed": config.seed, "device": where}
    print(f"zoo: {config.jobs} job(s) x {config.rows_per_job} checkpoint(s) on {len(tasks)} task(s) of "
          f"{source_name(config.source)}, {layout.numel} parameters each; {len(pending)}/{chunks.count} parts to "
          f"write on {config.num_actors} workers" + (f" × {where}" if config.gpus_per_member else ""))
    done = fanout.run_chunks(fanout.Output(store, chunks, metadata), ZooWorker,
                             {"config": config.to_dict(), "metadata": metadata}, what="zoo members",
                             workers=config.num_actors, run_dir=run_dir, scan=scan,
                             num_gpus=config.gpus_per_member)
    return {"uri": store.loc.uri, "members": chunks.n, "parts": chunks.count, "written": done.rows,
            "seconds": time.perf_counter() - start, "device": where}


def source_name(source: str) -> str:
    from raygen import storage

    return "the built-in digits" if source == "digits" else storage.display(source)


# ====================================================================== report


def describe_task(task: dict[str, Any], class_names: list[str]) -> str:
    """A task definition in a few words, for the report."""
    family = task["family"]
    if family in ("subset", "column"):
        classes = ", ".join(class_names[c] for c in task["classes"])
        return f"classes {classes}" if family == "subset" else f"task {task['value']!r}: classes {classes}"
    if family == "permutation":
        return "fixed pixel permutation"
    if family == "rotation":
        return f"rotation by {task['angle']:.1f} degrees"
    return "all classes"


def task_table(cols: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Test accuracy (%) of the members of each task."""
    from raygen.weightgen.evaluate import accuracy_summary

    return {str(t): accuracy_summary(cols["test_acc"][cols["task_id"] == t])
            for t in sorted(set(cols["task_id"].tolist()))}


def _histogram(run_dir, test_acc: np.ndarray) -> str:
    import matplotlib.ticker

    fig, ax = plots.pyplot().subplots(figsize=(6, 4))
    ax.hist(100 * test_acc, bins=30)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("members")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"{len(test_acc)} zoo members")
    run_dir.save_figure("accuracy_hist.png", fig)
    return "accuracy_hist.png"


def _markdown(config: ZooConfig, summary: dict[str, Any], meta: dict[str, Any], plot: str) -> str:
    names = meta["source"]["class_names"]
    lines = [f"# raygen zoo: {config.name} ({config.mode} mode)", "",
             f"Data: {source_name(config.source)} ({len(names)} classes, images {meta['source']['shape']}); "
             f"{summary['members']} members ({summary['parameters']} parameters each) from {summary['tasks']} "
             f"task(s) x {config.seeds} seed(s); parts: {summary['uri']}.", "",
             "## Test accuracy of the members (%)", "",
             "| task | definition | members | mean | min | max |", "|---|---|---|---|---|---|"]
    for t, row in summary["per_task"].items():
        lines.append(f"| {t} | {describe_task(meta['tasks'][t], names)} | {row['n']} | {row['acc_mean']:.2f} | "
                     f"{row['acc_min']:.2f} | {row['acc_max']:.2f} |")
    a = summary["accuracy"]
    lines += ["", f"All members: mean {a['acc_mean']:.2f}%, min {a['acc_min']:.2f}%, max {a['acc_max']:.2f}%.",
              "", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"


# ====================================================================== the workload


def preflight(config: ZooConfig):
    """The zoo's data and tasks, checked (bad data is one line before Ray starts or anything is written)."""
    from raygen.weightgen.zoo import load_source

    data = load_source(config.source_spec())
    return data, zoo_tasks(config, data)


def run(config: ZooConfig, *, verbose: bool = False, checked: tuple | None = None) -> dict[str, Any]:
    """`checked`: preflight(config)'s result when the caller (the CLI) has run it already."""
    from raygen import runtime, storage
    from raygen.rundir import RunDir
    from raygen.weightgen.evaluate import accuracy_summary

    data, tasks = checked or preflight(config)
    runtime.init(verbose=verbose)
    run_dir = RunDir(config)
    stage = collect(config, run_dir, data, tasks)
    thetas, cols, meta = read_zoo(stage["uri"])
    summary: dict[str, Any] = {
        "run_dir": run_dir.uri, "report": run_dir.child_uri("report.md"), **stage, "mode": config.mode,
        "source": config.source, "tasks": len(tasks), "parameters": int(thetas.shape[1]),
        "accuracy": accuracy_summary(cols["test_acc"]), "per_task": task_table(cols),
    }
    plot = _histogram(run_dir, cols["test_acc"])
    run_dir.write_report(summary, _markdown(config, summary, meta, plot))
    run_dir.close()
    a = summary["accuracy"]
    print(f"zoo: {summary['members']} members, test accuracy mean {a['acc_mean']:.2f}% "
          f"min {a['acc_min']:.2f}% max {a['acc_max']:.2f}%  ->  {storage.display(run_dir.uri)}")
    return summary
