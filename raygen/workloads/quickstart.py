"""`workload: quickstart` — the main job: train -> sample -> contamination study -> report.

Each stage is a sub-run of its own workload under the quickstart's run directory, with a config
derived from the quickstart's flat keys:

    <run_dir>/train/    class-conditional denoiser on the built-in digits  (workload `train`)
    <run_dir>/sample/   labelled digits drawn with MMDGS on Ray workers         (workload `sample`)
    <run_dir>/study/    contamination study with Ray Data mixing + Ray Tune     (workload `study`)

Re-running reuses what is done, and only what was made with the same settings: a finished
training whose config matches is skipped (an unfinished one resumes from its last checkpoint),
sampling skips parts already written, and the study resumes its Tuner. A re-run with other
settings is refused by the quickstart's run directory, naming the keys (`--fresh` starts over).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Literal

from raygen.config import Config, bounded


@dataclasses.dataclass
class QuickstartConfig(Config):
    RESUME_FREE = frozenset({"num_actors"})  # samples are bit-identical for any actor count

    name: str = "quickstart"
    # stage 1: SADM training (raygen train)
    train_steps: int = bounded(800, ge=1)
    train_batch_size: int = bounded(64, ge=1)
    sadm_lambda: float = 0.0  # plain training: no SADM form improved FD in benchmarks/sadm_quality.py
    sadm_warmup: int = 200
    label_dropout: float = 0.1
    train_workers: int = bounded(0, ge=0)  # 0: train in the driver process; >= 1: Ray Train workers
    # stage 2: MMDGS sampling (raygen sample)
    n_samples: int = bounded(1000, ge=1)  # 100 per digit; the study needs >= ~72 per class at ratio 1.0
    covariance: Literal["full", "diag", "iso", "none"] = "diag"
    sigma_max: float = 1.0
    sigma_min: float = 0.05
    levels: int = bounded(8, ge=1)
    steps_per_level: int = bounded(2, ge=1)
    guidance: float = 0.0
    num_actors: int = bounded(2, ge=1)
    chunk_size: int = bounded(100, ge=1)
    # stage 3: contamination study (raygen study)
    ratios: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.2, 0.4, 0.8, 1.0])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    epochs: int = bounded(20, ge=1)
    feature_steps: int = bounded(400, ge=1)

    def validate(self) -> None:
        super().validate()
        # the stage configs check the keys passed through unchanged; building them fails before any work
        self.train_config("/tmp"), self.sample_config("/tmp", "/tmp"), self.study_config("/tmp", "/tmp")

    def train_config(self, root: str):
        from raygen.diffusion.train import TrainSADMConfig

        return TrainSADMConfig(
            name="train", storage_path=root, seed=self.seed, data="digits", channels=1, model_size="tiny",
            num_classes=10, label_dropout=self.label_dropout, steps=self.train_steps,
            batch_size=self.train_batch_size, sadm_lambda=self.sadm_lambda,
            sadm_warmup=min(self.sadm_warmup, self.train_steps), checkpoint_every=max(1, self.train_steps // 4),
            log_every=max(1, min(50, self.train_steps // 4)), sample_every=self.train_steps, num_samples=64,
            num_workers=self.train_workers,
        )

    def sample_config(self, root: str, checkpoint: str):
        from raygen.workloads.sample import SampleConfig

        return SampleConfig(
            name="sample", storage_path=root, seed=self.seed, model=checkpoint, sampler="mmdgs",
            covariance=self.covariance, sigma_max=self.sigma_max, sigma_min=self.sigma_min, levels=self.levels,
            steps_per_level=self.steps_per_level, guidance=self.guidance, n_samples=self.n_samples,
            chunk_size=self.chunk_size, num_actors=self.num_actors, dtype="float32",
            stats_samples=min(self.n_samples, 2000),
        )

    def study_config(self, root: str, generated: str):
        from raygen.workloads.study import StudyConfig

        return StudyConfig(name="study", storage_path=root, seed=self.seed, real="digits", generated=generated,
                           ratios=list(self.ratios), seeds=list(self.seeds), epochs=self.epochs,
                           feature_steps=self.feature_steps)


CONFIG = QuickstartConfig


def _finished_training(run_dir, train_config) -> str | None:
    """The final checkpoint of the `train` stage if it finished with exactly these settings, else None
    (an unfinished one resumes; one made with other settings is refused by its run directory)."""
    from raygen import storage

    stage = storage.resolve(train_config.run_dir)
    if not (storage.exists(stage.child("report.json")) and storage.exists(stage.child("config.json"))):
        return None
    made_with = type(train_config).provenance_of(json.loads(storage.read_bytes(stage.child("config.json"))))
    report = json.loads(storage.read_bytes(stage.child("report.json")))
    # `steps` may change on a resume (more steps continue training), so it is checked here
    if made_with != train_config.provenance() or report.get("steps") != train_config.steps:
        return None
    return report.get("checkpoint")


def run(config: QuickstartConfig, *, verbose: bool = False) -> dict[str, Any]:
    from raygen import runtime
    from raygen.errors import UserError
    from raygen.rundir import RunDir
    from raygen.workloads import sample, study, train

    runtime.init(verbose=verbose)
    run_dir = RunDir(config)
    root = run_dir.uri
    stages: dict[str, dict[str, Any]] = {}

    start = time.perf_counter()
    checkpoint = _finished_training(run_dir, config.train_config(root))
    if checkpoint is None:
        what = f"SADM (lambda {config.sadm_lambda})" if config.sadm_lambda > 0 else "plain denoising"
        print(f"[1/3] training a class-conditional denoiser on digits, {what}, {config.train_steps} steps")
        trained = train.run(config.train_config(root), verbose=verbose)
        checkpoint = trained["checkpoint"]
        if checkpoint is None:
            raise UserError(f"training under {run_dir.child_uri('train')} wrote no checkpoint; see its metrics.jsonl")
        stages["train"] = {"reused": False, "seconds": time.perf_counter() - start,
                           "resumed_from": trained["resumed_from"]}
    else:
        print(f"[1/3] training already finished: reusing {checkpoint}")
        stages["train"] = {"reused": True, "seconds": 0.0}
    stages["train"].update(checkpoint=checkpoint, report=run_dir.child_uri("train/report.md"))

    start = time.perf_counter()
    print(f"[2/3] sampling {config.n_samples} labelled digits with MMDGS ({config.covariance}) "
          f"on {config.num_actors} Ray workers")
    sampled = sample.run(config.sample_config(root, checkpoint), verbose=verbose)
    stages["sample"] = {"seconds": time.perf_counter() - start, "parts": sampled["parts"],
                        "parts_reused": sampled["chunks_resumed"], "samples_per_s": sampled["samples_per_s"],
                        "report": sampled["report"], "preview": sampled["preview"]}

    start = time.perf_counter()
    print(f"[3/3] contamination study: ratios {config.ratios} x 2 arms x seeds {config.seeds}")
    studied = study.run(config.study_config(root, sampled["run_dir"]), verbose=verbose)
    stages["study"] = {"seconds": time.perf_counter() - start, "report": studied["report"]}

    summary = {"run_dir": root, "report": run_dir.child_uri("report.md"), "stages": stages, "table": studied["table"],
               "shape": studied["shape"], "diversity": studied["diversity"]}
    run_dir.write_report(summary, _markdown(config, stages, run_dir.read_text("study/report.md")))
    run_dir.close()
    return summary


def _markdown(config: QuickstartConfig, stages: dict[str, dict[str, Any]], study_report: str) -> str:
    train = stages["train"]
    sample = stages["sample"]
    lines = [
        f"# raygen quickstart: {config.name}",
        "",
        "| stage | what | seconds | details |",
        "|---|---|---|---|",
        f"| 1 train | class-conditional denoiser (sadm_lambda {config.sadm_lambda}), {config.train_steps} steps on digits | {train['seconds']:.0f} | "
        + ("reused a finished training" if train["reused"] else "trained now") + ", [report](train/report.md) |",
        f"| 2 sample | {config.n_samples} labelled digits, MMDGS `{config.covariance}`, {config.num_actors} actors | "
        f"{sample['seconds']:.0f} | {sample['parts_reused']}/{sample['parts']} parts reused, "
        "[report](sample/report.md), [preview](sample/preview.png) |",
        f"| 3 study | contamination study, {len(config.ratios)} ratios x 2 arms x {len(config.seeds)} seeds | "
        f"{stages['study']['seconds']:.0f} | [report](study/report.md) |",
        "",
    ]
    # The study's own report, with its links made relative to this directory, and its title demoted.
    body = re.sub(r"\]\((?!https?:)([^)]+\.png)\)", r"](study/\1)", study_report)
    return "\n".join(lines) + "\n" + body.replace("# Contamination study", "## Contamination study", 1)
