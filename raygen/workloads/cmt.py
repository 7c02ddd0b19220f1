"""`workload: cmt` — few-shot domain adaptation by causal mechanism transfer (Teshima, Sato & Sugiyama,
ICML 2020) on Ray Tune.

One Tune trial per (target domain, n, split, method, INN setting): the trial rebuilds its few-shot
split from the panel (the split depends only on seed, target, n and split, so every method sees the
same points), runs the method (`raygen.cmt.methods.run_method`) and reports every evaluation
(`cmt`: every `eval_every` GCL epochs). The driver then selects, per (target, n, split, method),
the trial and epoch with the lowest nested leave-one-out MSE on the target training points (each
point held out in turn, the method redone from the other n − 1, augmentation included; the fit's
own partial LOOCV is kept beside it but leaks through augmentation) and scores it by target-test
MSE relative to the target's leave-one-out reference (`raygen.cmt.report`).

Splits: `splits_from: teshima2020` takes the authors' 180 published Gasoline splits (shipped as a
plain CSV, `raygen/cmt/data/`), or a path to a CSV of the same form (`target,split,year,role`), so
results compare with theirs split by split; split k of a target is then the file's split k. A
pickle is refused (raygen never unpickles). Empty: raygen's own seeded splits.

Randomness: the split (unless `splits_from`) from stream CMT_SPLIT, everything inside a trial (INN / classifier init, GCL
batches, recombination subsets, FastICA) from CMT_FIT, both indexed by (target, n, split), the
synthetic panel from CMT_PANEL (`raygen.seeds`).

Devices: `gpus_per_trial` puts method cmt's INN and GCL training on the GPU Ray assigned the trial
(`raygen.device`); their draws are still made by the CPU generators above and moved, so a GPU run
uses the CPU run's draws (its numbers differ by float64 rounding as training carries it, not bit
for bit). Augmentation, the one-class SVM and every KRR stay numpy on the CPU, and so do the other
methods.

Data: `gasoline` (each country in turn is the target, the others the sources; n = 6 training and
13 test points per split) or `synthetic` (known f, one target domain, n swept over `n_train`).
The dataclass defaults are the paper's grid; the job files in jobs/ pick a budget of minutes.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Literal

import numpy as np

from raygen.config import Config, bounded, check
from raygen.errors import UserError

EXPERIMENT = "trials"


@dataclasses.dataclass
class CmtConfig(Config):
    RESUME_FREE = frozenset({"cpus_per_trial", "gpus_per_trial"})

    name: str = "cmt_gasoline"
    data: Literal["gasoline", "synthetic"] = "gasoline"
    csv: str = ""  # gasoline: a CSV with COUNTRY, LINCOMEP, LRPMG, LCARPCAP, LGASPCAR; empty: the shipped copy
    targets: list[str] = dataclasses.field(default_factory=list)  # gasoline countries; empty: every domain in turn
    # fixed splits: "teshima2020" (the authors', shipped) or a CSV path (target,split,year,role); empty: seeded
    splits_from: str = ""
    n_train: list[int] = dataclasses.field(default_factory=lambda: [6])  # target training points
    splits: int = bounded(10, ge=1)
    methods: list[str] = dataclasses.field(default_factory=lambda: ["cmt", "target_only", "source_only", "pooled"])
    # the INN / GCL grid (method cmt): one trial per combination
    depths: list[int] = dataclasses.field(default_factory=lambda: [4, 8, 16])  # (linear, coupling) pairs
    coupling_hidden: list[int] = dataclasses.field(default_factory=lambda: [10, 100])
    classifier_hidden: list[int] = dataclasses.field(default_factory=lambda: [10, 20])
    weight_decays: list[float] = dataclasses.field(default_factory=lambda: [1e-3, 1e-2, 1e-1])
    lr: float = bounded(1e-3, gt=0)
    batch_size: int = bounded(32, ge=2)
    epochs: int = bounded(500, ge=1)
    eval_every: int = bounded(20, ge=1)
    max_augment: int = bounded(5000, ge=1)  # recombinations per evaluation; above, a seeded random subset
    nu: float = bounded(0.1, gt=0, le=1)  # OneClassSVM outlier filter
    # reference: θ = (KᵀK + αI)⁻¹Kᵀy as in the authors' code; dual: θ = (K + αI)⁻¹y (raygen's form before)
    krr_form: Literal["reference", "dual"] = "reference"
    # synthetic benchmark
    n_sources: int = bounded(5, ge=2)
    source_size: int = bounded(200, ge=10)
    test_size: int = bounded(1000, ge=1)
    cpus_per_trial: float = bounded(1.0, gt=0)
    gpus_per_trial: float = bounded(0.0, ge=0)  # the INN / GCL of method cmt; fractions share a GPU (raygen.device)

    def validate(self) -> None:
        super().validate()
        from raygen.cmt.methods import METHODS

        for key in ("n_train", "methods", "depths", "coupling_hidden", "classifier_hidden", "weight_decays"):
            values = getattr(self, key)
            check(bool(values) and len(set(values)) == len(values), key, "list at least one value, without repeats")
        for key, low in (("n_train", 2), ("depths", 1), ("coupling_hidden", 1), ("classifier_hidden", 1),
                         ("weight_decays", 0)):
            bad = [v for v in getattr(self, key) if v < low]
            check(not bad, key, f"values must be >= {low}, got {bad[0] if bad else ''!r}")
        unknown = sorted(set(self.methods) - set(METHODS))
        check(not unknown, "methods", f"unknown {unknown[0] if unknown else ''!r}; valid: {', '.join(METHODS)}")
        check("oracle" not in self.methods or self.data == "synthetic", "methods",
              "'oracle' needs the true mechanism: use it with data: synthetic")
        check(self.data == "gasoline" or not self.targets, "targets",
              "synthetic data has one target domain; leave targets empty and sweep n_train")
        check(self.data == "gasoline" or not self.csv, "csv", "only read with data: gasoline")
        check(self.data == "gasoline" or not self.splits_from, "splits_from", "only used with data: gasoline")


CONFIG = CmtConfig


def load_panel(config: CmtConfig):
    from raygen.cmt.datasets import load_gasoline, load_splits, synthetic_panel
    from raygen.seeds import Stream, numpy_rng

    if config.data == "gasoline":
        panel = load_gasoline(config.csv or None)
        # the splits travel with the panel to every trial: a relative path is read once, here
        return dataclasses.replace(panel, splits=load_splits(config.splits_from)) if config.splits_from else panel
    return synthetic_panel(numpy_rng(config.seed, Stream.CMT_PANEL), n_sources=config.n_sources, source_size=config.source_size,
                           target_size=config.test_size + max(config.n_train))


def plan(config: CmtConfig, panel) -> list[dict[str, Any]]:
    """Every trial's spec; a spec alone (with the panel) determines the trial's result."""
    from raygen.cmt.methods import Setting

    targets = config.targets or (["target"] if config.data == "synthetic" else list(panel.names))
    settings = [dataclasses.asdict(Setting(*s)) for s in itertools.product(
        config.depths, config.coupling_hidden, config.classifier_hidden, config.weight_decays)]
    specs = []
    for target, n, split in itertools.product(targets, config.n_train, range(config.splits)):
        for method in config.methods:
            for setting in settings if method == "cmt" else [None]:
                specs.append({"target": target, "n": n, "split": split, "method": method, "setting": setting})
    return specs


def run_trial(trial: dict[str, Any], *, panel, job: dict[str, Any]) -> list[dict[str, Any]]:
    """{"trial": spec, "on_eval": callback or absent} -> the spec's evaluations; used by Tune and the benchmark."""

    from raygen.cmt.methods import Setting, Training, run_method
    from raygen.device import device_for
    from raygen.seeds import Stream, numpy_rng, torch_generator
    from raygen.threads import use_one_thread

    use_one_thread()
    config = CmtConfig.from_dict(job)
    device = device_for("gpus_per_trial", config.gpus_per_trial)
    spec = trial["trial"]
    split = make_split(config, panel, spec["target"], spec["n"], spec["split"])
    training = Training(lr=config.lr, batch_size=config.batch_size, epochs=config.epochs,
                        eval_every=config.eval_every, max_augment=config.max_augment, nu=config.nu,
                        krr_form=config.krr_form)
    # every method and setting of one split draws the same streams (same INN init for every setting)
    index = (panel.names.index(spec["target"]), spec["n"], spec["split"])
    return run_method(spec["method"], split, training=training, rng=numpy_rng(config.seed, Stream.CMT_FIT, *index, 1),
                      generator=torch_generator(config.seed, Stream.CMT_FIT, *index, 0),
                      setting=Setting(**spec["setting"]) if spec["setting"] else None, mechanism=panel.mechanism,
                      on_eval=trial.get("on_eval"), device=device)


def make_split(config: CmtConfig, panel, target: str, n: int, split: int):
    """The few-shot split of (target, n, split): the same for every method and setting."""
    from raygen.cmt.datasets import fixed_split, split_target
    from raygen.seeds import Stream, numpy_rng

    if panel.splits is not None:
        fixed = fixed_split(panel, target, split)
        if len(fixed.z_train) != n:
            raise UserError(f"splits_from split {split} of {target!r} has {len(fixed.z_train)} training points, "
                            f"not n_train={n}; set n_train: [{len(fixed.z_train)}]")
        return fixed

    t = panel.names.index(target) if target in panel.names else 0  # an unknown target is refused by split_target
    return split_target(panel, target, n, numpy_rng(config.seed, Stream.CMT_SPLIT, t, n, split))


def tune_trial(trial: dict[str, Any], *, panel, job: dict[str, Any]) -> None:
    """Tune function trainable: one report per evaluation, carrying the best-by-nested-LOO so far."""
    from ray import tune

    best: dict[str, float] = {}

    def on_eval(result: dict[str, Any]) -> None:
        if not best or result["nested_loo_mse"] < best["best_nested_loo_mse"]:
            best.update(best_nested_loo_mse=result["nested_loo_mse"], best_loocv_mse=result["loocv_mse"],
                        best_test_mse=result["test_mse"], best_epoch=result.get("epoch", 0),
                        best_acceptance=result.get("acceptance", float("nan")))
        tune.report({**result, **best})

    run_trial({**trial, "on_eval": on_eval}, panel=panel, job=job)


def make_trainable(config: CmtConfig, panel):
    from ray import tune

    return tune.with_resources(tune.with_parameters(tune_trial, panel=panel, job=config.to_dict()),
                               {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})


def fit_trials(specs: list[dict[str, Any]], trainable, storage: dict[str, Any], *,
               max_concurrent: int | None = None, progress: bool = True):
    """Run one Tune trial per spec in `<storage_path>/trials`, or resume an unfinished experiment there."""
    from ray import tune

    from raygen.workloads import tuning

    results, _ = tuning.fit(trainable, storage=storage, name=EXPERIMENT, param_space={"trial": tune.grid_search(specs)},
                            total=len(specs), label="cmt trials", progress=progress,
                            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=max_concurrent))
    return results


def collect(results) -> list[dict[str, Any]]:
    """Per trial: its spec and its best-by-nested-LOO evaluation; a failed trial is one UserError line."""
    from raygen.workloads import tuning

    trials, errors, unfinished = [], [], 0
    for result, error in tuning.outcomes(results):
        if error is not None:
            errors.append(error)
            continue
        spec, m = result.config["trial"], result.metrics
        if "best_nested_loo_mse" not in m:  # never reported: the run was interrupted before this trial ran
            unfinished += 1
            continue
        trials.append({"target": spec["target"], "n": spec["n"], "split": spec["split"], "method": spec["method"],
                       "setting": spec["setting"], "nested_loo_mse": m["best_nested_loo_mse"],
                       "loocv_mse": m["best_loocv_mse"], "test_mse": m["best_test_mse"],
                       "epoch": m["best_epoch"], "acceptance": m["best_acceptance"],
                       "evaluations": int(m["training_iteration"]), "seconds": float(m["time_total_s"]),
                       "hindsight_test_mse": float(result.metrics_dataframe["test_mse"].min())})
    tuning.refuse_failures(errors, "cmt")
    if unfinished:
        raise UserError(f"{unfinished} cmt trial(s) did not finish (interrupted); run the same command again to resume")
    return trials


def markdown(config: CmtConfig, summary: dict[str, Any], table_md: str) -> str:
    from raygen.cmt.report import PAPER_GASOLINE

    t = summary["tallies"]
    lines = [
        f"# Causal mechanism transfer: {config.data}", "",
        f"{summary['trials']} Ray Tune trials (one per target, n, split, method, INN setting): "
        f"{summary['seconds']['trials']:.0f} s of trial time, {summary['seconds']['tune']:.0f} s wall-clock in this "
        f"invocation (a resumed run reuses finished trials); {config.splits} split(s); GCL {config.epochs} epochs, "
        f"evaluated every "
        f"{config.eval_every}; {summary['settings']} INN setting(s) per split.", "",
        "Score: target-test MSE of the selected model divided by the target's leave-one-out reference — the mean "
        "squared leave-one-out residual of RBF kernel ridge regression fitted on **all** the target's points "
        "(median-heuristic bandwidth, ridge chosen by the same closed-form LOOCV), i.e. the paper's LOO column = 1. "
        f"Every KRR in the {config.krr_form!r} form"
        + (" θ = (KᵀK + αI)⁻¹Kᵀy of the authors' code. " if config.krr_form == "reference" else " θ = (K + αI)⁻¹y. ")
        + "Selection per split: the trial and epoch with the lowest nested leave-one-out MSE on the n target "
        "training points (each held out in turn, the method redone from the other n − 1, augmentation included). "
        "Mean (standard error) over splits; best mean per row in bold (a win only when not tied). "
        "The paper's target-only baseline code and LOO normaliser are not published: its numbers are a pattern "
        "to compare with, not the same measurement.", "",
        table_md, "", f"![relative MSE]({summary['plot']})", "",
    ]
    aug = summary["acceptance"]
    if aug:
        lines += ["Mean acceptance ratio of the one-class-SVM filter (selected evaluations): "
                  + ", ".join(f"{m} {v:.2f}" for m, v in aug.items()) + "; selected evaluations with every "
                  "recombination rejected (the fit is then exactly target-only's): "
                  + ", ".join(f"{m} {k}" for m, k in summary["all_rejected"].items()) + ".", ""]
    lines += ["## Against the published pattern", ""]
    if config.data == "gasoline" and "cmt" in t and "target_only" in t:
        rows = t["cmt"]["rows"]
        lines += [
            f"- cmt best on {t['cmt']['wins']} of {rows} targets, tied for best on {t['cmt']['tied_best']} more "
            f"(paper: {PAPER_GASOLINE['cmt_best']} of 18).",
            f"- cmt beats target-only on {t['cmt']['beats_target_only']} of {rows} (paper: "
            f"{PAPER_GASOLINE['cmt_beats_target_only']} of 18).",
            f"- mean relative MSE cmt {t['cmt']['mean']:.2f} vs target-only {t['target_only']['mean']:.2f} "
            f"(paper: {PAPER_GASOLINE['cmt_mean']} vs {PAPER_GASOLINE['target_only_mean']}).",
        ]
    if "cmt_hindsight" in summary:
        h = summary["cmt_hindsight"]
        lines += [f"- diagnostic (peeks at the test set, not a method): cmt with its best INN setting and epoch in "
                  f"hindsight has mean relative MSE {h['mean']:.2f} and beats target-only on {h['beats_target_only']} "
                  f"of {h['rows']} rows; the gap to the selected cmt is what the selection loses."]
    if config.data == "synthetic" and "oracle" in t and "target_only" in t:
        gains = summary["oracle_gain"]
        lines += ["- target-only / oracle MSE ratio by n (paper: > 1 for small n, shrinking as n grows): "
                  + ", ".join(f"n={n}: {g:.2f}" for n, g in gains.items()) + "."]
    if "pooled" in t and "target_only" in t:
        worst = summary["pooled_worst"]
        lines += [f"- negative transfer of pooling: pooled / target-only relative MSE is largest on {worst['target']} "
                  f"(n={worst['n']}): {worst['ratio']:.1f}x (paper: strong on some targets, e.g. Canada)."]
    return "\n".join(lines) + "\n"


def summarise(config: CmtConfig, panel, trials: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    from raygen.cmt.report import counts, hindsight, loo_reference, select, table

    references = {t: loo_reference(panel.rows_of(t), config.krr_form) for t in sorted({tr["target"] for tr in trials})}
    selected = select(trials, references)
    rows = table(selected, list(config.methods))
    tallies = counts(rows, list(config.methods))
    acceptance = {m: float(np.nanmean([s["acceptance"] for s in selected if s["method"] == m]))
                  for m in config.methods if m in ("cmt", "fastica", "oracle")}
    summary: dict[str, Any] = {
        "name": config.name, "data": config.data, "trials": len(trials), "splits": config.splits,
        "settings": len(config.depths) * len(config.coupling_hidden) * len(config.classifier_hidden)
        * len(config.weight_decays),
        "references": references, "table": [{**r, "cells": {m: list(c) for m, c in r["cells"].items()}} for r in rows],
        "tallies": tallies, "acceptance": acceptance,
        "all_rejected": {m: sum(s["method"] == m and s["acceptance"] == 0 for s in selected) for m in acceptance},
        "selected": selected, "seconds": seconds,
        "plot": "relative_mse.png",
    }
    if "cmt" in config.methods and "target_only" in config.methods:
        summary["cmt_hindsight"] = hindsight(trials, references, rows, "cmt")
    if "oracle" in config.methods and "target_only" in config.methods:
        summary["oracle_gain"] = {r["n"]: r["cells"]["target_only"][0] / r["cells"]["oracle"][0] for r in rows}
    if "pooled" in config.methods and "target_only" in config.methods:
        worst = max(rows, key=lambda r: r["cells"]["pooled"][0] / r["cells"]["target_only"][0])
        summary["pooled_worst"] = {"target": worst["target"], "n": worst["n"],
                                   "ratio": worst["cells"]["pooled"][0] / worst["cells"]["target_only"][0]}
    return summary


def preflight(config: CmtConfig) -> tuple:
    """The panel and the trial specs, checked: a bad CSV, target or n is one line before Ray starts."""
    panel = load_panel(config)
    specs = plan(config, panel)
    # bad targets / n / fixed splits fail here, not in 100 trials
    for target, n, split in sorted({(s["target"], s["n"], s["split"] if panel.splits else 0) for s in specs}):
        make_split(config, panel, target, n, split)
    return panel, specs


def run(config: CmtConfig, *, verbose: bool = False, checked: tuple | None = None) -> dict[str, Any]:
    """`checked`: preflight(config)'s result when the caller (the CLI) has run it already."""
    from raygen import runtime
    from raygen.cmt.report import markdown_table, plot
    from raygen.device import trial_resources
    from raygen.rundir import RunDir

    panel, specs = checked or preflight(config)
    runtime.init(verbose=verbose)
    _, where = trial_resources(config.cpus_per_trial, config.gpus_per_trial)  # checked before anything is written
    run_dir = RunDir(config)
    start = time.perf_counter()
    print(f"cmt on {config.data}: {len(specs)} trials (Ray Tune) on {where} ...")
    trials = collect(fit_trials(specs, make_trainable(config, panel), run_dir.ray_storage()))
    seconds = {"tune": time.perf_counter() - start, "trials": sum(t["seconds"] for t in trials)}
    summary = summarise(config, panel, trials, seconds)
    summary["device"] = where
    rows = [{**r, "cells": {m: tuple(c) for m, c in r["cells"].items()}} for r in summary["table"]]
    for r in rows:
        run_dir.log(r["n"], **{f"{r['target']}/{m}": c[0] for m, c in r["cells"].items()})
    run_dir.save_figure(summary["plot"], plot(rows, list(config.methods), by_n=config.data == "synthetic"))
    summary["seconds"]["total"] = time.perf_counter() - start
    summary["run_dir"], summary["report"] = run_dir.uri, run_dir.child_uri("report.md")
    table_md = markdown_table(rows, list(config.methods), summary["tallies"])
    run_dir.write_report(summary, markdown(config, summary, table_md))
    run_dir.close()
    print(table_md)
    return summary
