"""`workload: train` — SADM diffusion training on Ray Train (thin adapter over `raygen.diffusion.train`).

`num_workers: 0` calls `train_func` in this process (no Ray at all for the built-in digits);
`num_workers: N` runs it on N Ray Train workers with `TorchTrainer`, data from Ray Data shards,
checkpoints kept by Ray (`CheckpointConfig(num_to_keep)`), failed workers retried from the latest
checkpoint (`FailureConfig(max_failures)`). Re-running with the same `name` resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raygen.diffusion.train import TrainSADMConfig, train_func
from raygen.errors import UserError, find_user_error

CONFIG = TrainSADMConfig


def _fit_on_ray(config: TrainSADMConfig, loop_config: dict, verbose: bool) -> tuple[dict, str | None]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raygen import runtime
    from raygen.data import load_dataset

    runtime.init(verbose=verbose)
    dataset = load_dataset(config.data, image_column=config.image_column, label_column=config.label_column,
                           image_size=config.image_size, channels=config.channels)
    trainer = TorchTrainer(
        train_func,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            storage_path=loop_config["storage_path"],
            name=config.name,
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
        datasets={"train": dataset},
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; a user mistake (NaN, bad data) stays one line
        user_error = find_user_error(exc)
        if user_error is not None:
            raise UserError(str(user_error)) from None
        raise
    return dict(result.metrics or {}), (result.checkpoint.path if result.checkpoint else None)


def run(config: TrainSADMConfig, *, verbose: bool = False) -> dict[str, Any]:
    from raygen.rundir import RunDir

    run_dir = RunDir(config)
    # workers must write to the same place whatever their cwd: pass an absolute storage path
    loop_config = {**config.to_dict(), "storage_path": str(run_dir.path.parent)}
    if config.num_workers == 0:
        metrics = train_func(loop_config)
        checkpoints = sorted(run_dir.path.glob("checkpoint_*"))
        checkpoint = str(checkpoints[-1]) if checkpoints else None
    else:
        metrics, checkpoint = _fit_on_ray(config, loop_config, verbose)
    grids = sorted((run_dir.path / "samples").glob("step_*.png"))
    summary = {
        "workload": "train",
        "steps": config.steps,
        "resumed_from": metrics.get("resumed_from"),
        "final": {k: v for k, v in metrics.items() if k not in ("step", "resumed_from")},
        "checkpoint": checkpoint,
        "sample_grid": str(grids[-1]) if grids else None,
        "workers": config.num_workers,
        "sadm_lambda": config.sadm_lambda,
    }
    run_dir.write_report(summary, _markdown(config, summary))
    run_dir.close()
    return summary


def _markdown(config: TrainSADMConfig, summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary["final"].items() if isinstance(v, (int, float)))
    grid = f"\n![samples](samples/{Path(summary['sample_grid']).name})\n" if summary["sample_grid"] else ""
    resumed = f" (resumed from step {summary['resumed_from']})" if summary["resumed_from"] else ""
    return (
        f"# SADM training: {config.name}\n\n"
        f"{config.steps} steps on `{config.data}`{resumed}, {config.model_size} U-Net"
        f"{' (energy)' if config.energy else ''}, lambda = {config.sadm_lambda}, "
        f"{max(config.num_workers, 1)} worker(s).\n\n"
        f"Last checkpoint: `{summary['checkpoint']}` (load with `raygen.models.load_denoiser`).\n\n"
        f"| metric (last logged step) | value |\n|---|---|\n{rows}\n{grid}\n"
        f"Config:\n\n```json\n{json.dumps(config.to_dict(), indent=2)}\n```\n"
    )
