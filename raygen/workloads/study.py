"""`workload: study` — a contamination study (Hataya, Bao & Arai, ICCV 2023) on Ray Data + Ray Tune.

1. Plan (driver, ids and labels only): split the real data into train / held-back / test; for
   every (ratio, arm, seed) pick exactly which training rows are replaced by which generated or
   held-back real rows (`raygen.contamination.mixing`).
2. Mix (Ray Data): one streaming pipeline tags, unions and permutes the rows of all mixes and
   writes them to `<run_dir>/mixes/mix=<key>/` Parquet; images never pass through the driver.
3. Train (Ray Tune): one trial per (ratio, arm, seed) reads its mix, trains a small CNN, reports
   clean test accuracy per epoch and finally accuracy on each corrupted test set. Re-running the
   same name resumes an unfinished Tuner.
4. Report: table, accuracy-vs-ratio plot, precision/recall of generated vs real, sample grids.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import numpy as np

from raygen.config import Config, bounded, check
from raygen.errors import UserError
from raygen.seeds import Stream, torch_generator

EXPERIMENT = "trials"


@dataclasses.dataclass
class StudyConfig(Config):
    RESUME_FREE = frozenset({"cpus_per_trial", "gpus_per_trial"})

    name: str = "study_digits"
    real: str = "digits"  # "digits" or an image folder <root>/<class>/<image>.png
    generated: str = ""  # a `raygen sample` run dir (class-conditional model) or an image folder
    ratios: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.2, 0.4, 0.8, 1.0])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    test_fraction: float = bounded(0.2, gt=0, lt=1)  # of each class; the rest is halved into train and held-back real
    epochs: int = bounded(30, ge=1)
    batch_size: int = bounded(64, ge=1)
    lr: float = bounded(2e-3, gt=0)
    noise_std: float = bounded(0.2, ge=0)  # corruptions of the test set
    blur_sigma: float = bounded(1.0, ge=0)
    rotate_degrees: float = bounded(30.0, ge=0)
    feature_steps: int = bounded(400, ge=1)  # training steps of the feature classifier for precision/recall
    diversity_images: int = bounded(2000, ge=1)  # images per set read into the driver for precision/recall and grids
    pr_k: int = bounded(3, ge=1)
    cpus_per_trial: float = bounded(1.0, gt=0)
    gpus_per_trial: float = bounded(0.0, ge=0)  # fractions share a GPU (raygen.device)

    def validate(self) -> None:
        super().validate()
        check(bool(self.generated), "generated", "set it to a `raygen sample` run directory or an image folder")
        check(bool(self.ratios) and all(0 <= r <= 1 for r in self.ratios), "ratios", "list ratios in [0, 1]")
        check(len(set(self.ratios)) == len(self.ratios), "ratios", "must not repeat")
        check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds", "list distinct seeds")


CONFIG = StudyConfig


def run_trial(trial: dict[str, Any], *, mixes_dir: str, test_sets: dict[str, tuple[np.ndarray, np.ndarray]],
              num_classes: int, job: dict[str, Any]) -> None:
    """Tune function trainable: train on one mix, `tune.report` per epoch, test-set accuracies last."""
    import torch
    from ray import tune

    from raygen.contamination.downstream import accuracy, train_downstream
    from raygen.contamination.mixing import mix_key
    from raygen.data.mixing import read_mix
    from raygen.device import device_for
    from raygen.threads import use_one_thread

    use_one_thread()
    config = StudyConfig.from_dict(job)
    device = device_for("gpus_per_trial", config.gpus_per_trial)
    mix = read_mix(mixes_dir, mix_key(trial["ratio"], trial["arm"], trial["seed"]))
    tests = {name: (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for name, (x, y) in test_sets.items()}
    generated_share = float(np.mean(mix["source"] != "real"))

    def on_epoch(epoch: int, loss: float, model) -> None:
        metrics = {"epoch": epoch, "train_loss": loss, "clean_acc": accuracy(model, *tests["clean"]),
                   "replaced_share": generated_share}
        if epoch == config.epochs:
            for name, (x, y) in tests.items():
                metrics[f"{name}_acc"] = accuracy(model, x, y)
            metrics["ood_acc"] = float(np.mean([metrics[f"{n}_acc"] for n in tests if n != "clean"]))
        tune.report(metrics)

    train_downstream(mix["image"], mix["label"], num_classes=num_classes,
                     generator=torch_generator(trial["seed"], Stream.DOWNSTREAM), epochs=config.epochs,
                     batch_size=config.batch_size, lr=config.lr, on_epoch=on_epoch, device=device)


def _describe(trial: dict[str, Any], result: dict[str, Any]) -> str:
    return f"ratio={trial['ratio']} {trial['arm']} seed={trial['seed']}: clean acc {result['clean_acc']:.3f}"


def _collect(results, corruptions: tuple[str, ...]) -> list[dict[str, Any]]:
    from raygen.workloads import tuning

    trials, errors = [], []
    for result, error in tuning.outcomes(results):
        if error is not None:
            errors.append(error)
            continue
        m = result.metrics
        trials.append({"ratio": result.config["ratio"], "arm": result.config["arm"], "seed": result.config["seed"],
                       "clean_acc": m["clean_acc"], "ood_acc": m["ood_acc"], "replaced_share": m["replaced_share"],
                       **{f"{c}_acc": m[f"{c}_acc"] for c in corruptions}, "path": result.path})
    tuning.refuse_failures(errors, "study")
    return trials


def run(config: StudyConfig, *, verbose: bool = False) -> dict[str, Any]:
    import torch
    from ray import tune

    from raygen import runtime
    from raygen.contamination.corruptions import CORRUPTIONS, corrupted_sets
    from raygen.contamination.diversity import MIN_LABEL_AGREEMENT, diversity
    from raygen.contamination.mixing import plan_study, split_real
    from raygen.contamination.report import accuracy_figure, markdown, shape_checks, summarise
    from raygen.contamination.sources import open_source
    from raygen.data.mixing import write_mixes
    from raygen.device import trial_resources
    from raygen.plots import labelled_grids
    from raygen.rundir import RunDir
    from raygen.seeds import Stream, numpy_rng
    from raygen.workloads import tuning

    runtime.init(verbose=verbose)
    real = open_source(config.real, "real")
    generated = open_source(config.generated, "generated").matched_to(real)
    missing = sorted(set(np.unique(real.labels).tolist()) - set(np.unique(generated.labels).tolist()))
    if missing:
        raise UserError(f"generated data {config.generated!r} has no images of classes {missing}; sample every class")
    run_dir = RunDir(config)
    start = time.perf_counter()

    split = split_real(real.ids, real.labels, test_fraction=config.test_fraction, seed=config.seed)
    plans = plan_study(split, real.labels_of, generated.ids, generated.labels, ratios=config.ratios,
                       seeds=config.seeds)
    # Metrics and grids use a seeded subset of equal size per set; the mixes themselves never come here.
    pick = numpy_rng(config.seed, Stream.SUBSET)
    n_div = min(len(split.train), len(generated.ids), config.diversity_images)
    real_train, train_labels = real.read(np.sort(pick.choice(split.train, n_div, replace=False)))
    gen_ids = np.sort(pick.choice(generated.ids, n_div, replace=False))
    gen_images, gen_labels = generated.read(gen_ids)
    if gen_images.shape[1:] != real_train.shape[1:]:
        raise UserError(f"generated images have shape {list(gen_images.shape[1:])} but real ones "
                        f"{list(real_train.shape[1:])}; sample at the real data's size")

    mixes_dir = run_dir.child_uri("mixes")
    print(f"mixing {len(plans)} training sets of {len(split.train)} images (Ray Data) ...")
    write_mixes(real.dataset(), generated.dataset(), plans, mixes_dir, seed=config.seed)
    mixed_at = time.perf_counter()

    test_x, test_y = real.read(split.test)
    corrupted = corrupted_sets(torch.from_numpy(test_x), noise_std=config.noise_std, blur_sigma=config.blur_sigma,
                               rotate_degrees=config.rotate_degrees, seed=config.seed)
    test_sets = {"clean": (test_x, test_y), **{k: (v.numpy(), test_y) for k, v in corrupted.items()}}
    num_classes = int(real.labels.max()) + 1
    resources, where = trial_resources(config.cpus_per_trial, config.gpus_per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, mixes_dir=mixes_dir, test_sets=test_sets, num_classes=num_classes,
                             job=config.to_dict()),
        resources,
    )
    print(f"training {len(plans)} downstream classifiers (Ray Tune) on {where} ...")
    space = {"ratio": tune.grid_search(list(config.ratios)), "arm": tune.grid_search(["generated", "control"]),
             "seed": tune.grid_search(list(config.seeds))}
    results, _ = tuning.fit(trainable, storage=run_dir.ray_storage(), name=EXPERIMENT, param_space=space, total=len(plans),
                            label="study trials", describe=_describe)
    trials = _collect(results, CORRUPTIONS)
    trained_at = time.perf_counter()

    holdout_images, holdout_labels = real.read(np.sort(pick.choice(split.holdout, n_div, replace=False)))
    div = diversity(real_train, train_labels, {"generated": (gen_images, gen_labels),
                                               "held-back real": (holdout_images, holdout_labels)},
                    generator=torch_generator(config.seed, Stream.FEATURES), steps=config.feature_steps, k=config.pr_k)
    if div["generated"]["label_agreement"] < MIN_LABEL_AGREEMENT:
        print(f"warning: a classifier trained on the real data agrees with only "
              f"{100 * div['generated']['label_agreement']:.1f} % of the generated labels; see the report")
    rows = summarise(trials, CORRUPTIONS)
    for r in rows:  # TensorBoard / metrics.jsonl: accuracy against the replaced percentage
        run_dir.log(int(round(100 * r["ratio"])), **{f"{m}/{r['arm']}": r[m] for m in ("clean_acc", "ood_acc")})
    run_dir.save_figure("accuracy_vs_ratio.png", accuracy_figure(rows), dpi=120)
    order = np.argsort(gen_labels, kind="stable")[:: max(1, n_div // 40)]
    real_order = np.argsort(train_labels, kind="stable")[:: max(1, len(train_labels) // 40)]
    grids = labelled_grids([("real (training split)", real_train[real_order], train_labels[real_order]),
                            ("generated", gen_images[order], gen_labels[order])])
    run_dir.save_figure("samples.png", grids, dpi=110, bbox_inches="tight")
    run_dir.write_text("trials.json", json.dumps(trials, indent=1))

    summary = {
        "name": config.name, "run_dir": run_dir.uri, "report": run_dir.child_uri("report.md"),
        "data": {"real": config.real, "generated": config.generated, "train": len(split.train),
                 "holdout": len(split.holdout), "test": len(split.test), "generated_rows": len(generated.ids)},
        "trials": len(trials), "seeds": list(config.seeds), "epochs": config.epochs, "pr_k": config.pr_k,
        "diversity_images": n_div,
        "table": rows, "shape": shape_checks(rows), "shape_ood": shape_checks(rows, "ood_acc"), "diversity": div,
        "seconds": {"mixing": mixed_at - start, "training": trained_at - mixed_at,
                    "total": time.perf_counter() - start},
        "plot": "accuracy_vs_ratio.png", "samples": "samples.png", "device": where,
    }
    run_dir.write_report(summary, markdown(summary, CORRUPTIONS))
    run_dir.close()
    return summary
