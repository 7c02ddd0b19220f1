"""`workload: train` — SADM diffusion training on Ray Train (thin adapter over `raygen.diffusion.train`).

`num_workers: 0` calls `train_func` in this process (no Ray at all for the built-in digits);
`num_workers: N` runs it on N Ray Train workers with `TorchTrainer`, data from Ray Data shards
(the built-in digits are held in each worker's memory instead: they are 1,797 tiny images),
failed workers retried from the latest checkpoint (`FailureConfig(max_failures)`). Either way rank 0
writes the checkpoints, `<run dir>/checkpoint_<step>/` (local disk or a bucket, complete once their
`.complete` marker is there), and re-running with the same `name` resumes.
"""

from __future__ import annotations

import json
from typing import Any

from raygen import device
from raygen.diffusion.train import TrainSADMConfig, train_func
from raygen.errors import UserError
from raygen.rundir import RunDir
from raygen.train_loop import launch

CONFIG = TrainSADMConfig


def run(config: TrainSADMConfig, *, verbose: bool = False) -> dict[str, Any]:
    def datasets() -> dict:
        from raygen.data import load_dataset

        return {"train": load_dataset(config.data, image_column=config.image_column, label_column=config.label_column,
                                      image_size=config.image_size, channels=config.channels)}

    check_classes(config)
    run_dir = RunDir(config)
    metrics, checkpoint = launch(train_func, config, run_dir, num_workers=config.num_workers,
                                 keep_checkpoints=config.keep_checkpoints, max_failures=config.max_failures,
                                 use_gpu=config.use_gpu, datasets=None if config.data == "digits" else datasets,
                                 verbose=verbose)
    grids = [n for n in run_dir.listdir("samples") if n.startswith("step_")]
    summary = {
        "workload": "train",
        "steps": config.steps,
        "resumed_from": metrics.get("resumed_from"),
        "final": {k: v for k, v in metrics.items() if k not in ("step", "resumed_from")},
        "checkpoint": run_dir.child_uri(checkpoint) if checkpoint else None,
        "sample_grid": run_dir.child_uri(f"samples/{grids[-1]}") if grids else None,
        "workers": config.num_workers,
        "sadm_lambda": config.sadm_lambda,
        "device": trained_on(config),
    }
    run_dir.write_report(summary, _markdown(config, summary, grids[-1] if grids else None))
    run_dir.close()
    return summary


def trained_on(config: TrainSADMConfig) -> str:
    """`raygen.device.describe` of what trained: a Ray Train worker's GPU (probed), this process's
    (TrainRun refuses use_gpu where torch sees no GPU), or the CPU."""
    if not config.use_gpu:
        return "cpu"
    if config.num_workers:
        return device.probe("use_gpu", 1, 1.0, off="use_gpu=false")
    return device.describe("cuda")


def check_classes(config: TrainSADMConfig) -> None:
    """A class-conditional model needs as many classes as the data has (checked for the built-in
    digits and image folders; a Parquet label column is only seen while training)."""
    import pyarrow.fs as pafs

    from raygen import storage
    from raygen.data.arrays import image_class_names

    if config.num_classes == 0:
        return
    if config.data == "digits":
        names = [str(c) for c in range(10)]
    else:
        loc = storage.resolve(config.data)
        entries = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
        if not any(e.type == pafs.FileType.Directory for e in entries):
            return  # Parquet, or a missing / empty source: the data loader names the problem
        names = image_class_names(loc)
    if len(names) > config.num_classes:
        raise UserError(f"config key 'num_classes': {config.data!r} has {len(names)} classes ({', '.join(names[:5])}"
                        f"{', ...' if len(names) > 5 else ''}) but num_classes is {config.num_classes}; set "
                        f"num_classes={len(names)} (or 0 for an unconditional model)")


def _markdown(config: TrainSADMConfig, summary: dict[str, Any], grid: str | None) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary["final"].items() if isinstance(v, (int, float)))
    grid = f"\n![samples](samples/{grid})\n" if grid else ""
    resumed = f" (resumed from step {summary['resumed_from']})" if summary["resumed_from"] else ""
    return (
        f"# SADM training: {config.name}\n\n"
        f"{config.steps} steps on `{config.data}`{resumed}, {config.model_size} U-Net"
        f"{' (energy)' if config.energy else ''}, lambda = {config.sadm_lambda}, "
        f"{max(config.num_workers, 1)} worker(s).\n\n"
        f"Last checkpoint: `{summary['checkpoint']}` (load with `raygen.models.load_denoiser`; "
        f"`model.sample_shape` is the shape to sample at).\n\n"
        f"| metric (last logged step) | value |\n|---|---|\n{rows}\n{grid}\n"
        f"Config:\n\n```json\n{json.dumps(config.to_dict(), indent=2)}\n```\n"
    )
