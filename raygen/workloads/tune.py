"""`raygen tune`: gradient-based bilevel HPO (Nyström / Nyström-PCG / CG / Neumann hypergradients) in Ray Tune.

One Tune trial runs one whole bilevel optimisation (`raygen.hypergrad.BilevelOptimizer`) and
reports every outer step with `ray.tune.report`, checkpointing so a trial can resume. Tune searches
the solver (a grid: every listed solver gets `num_samples` trials) and, sampled per trial, rank k,
rho, alpha, iterations, PCG tolerance, sketch refresh interval, outer lr, unroll length and seed;
ASHA stops poor trials early. The same
command runs the black-box baselines on the same task: random search and Optuna over the task's
single global hyperparameter (one weight decay; one class-weight exponent), training the inner
model for the same number of steps with that hyperparameter fixed.

A trial's result depends only on its sampled settings: the seed fixes the task's data and init and
the Nyström column draws, and each trial runs single-threaded.

`task` is a built-in task or a user's own problem by import path, `task: pkg.module:make_problem`:
`make_problem(data, init, device, **task_options)` returns a `raygen.hypergrad.BilevelProblem` (the
protocol is in `raygen.hypergrad.problem`); the built-in tasks are made the same way. The module is
looked for in the working directory (which `raygen submit` ships), the driver's, then the installed
packages. The driver builds the problem once and checks it before any trial starts.

`gpus_per_trial` > 0 runs each trial on the GPU Ray assigns it (`raygen.device`; the report
records the device); the problem is built there.

`rho_scale: lambda_max` (the default) makes each sampled rho relative to the inner Hessian's top
eigenvalue, estimated by `power_iters` warm-started power iterations per outer step and reported;
`reset_inner: true` restarts θ before every outer step (the reference library's protocol). Every
outer step reports ‖∇θ f‖ where its hypergradient was taken (implicit differentiation assumes 0).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from raygen.config import Config, bounded, check
from raygen.errors import UserError
from raygen.imports import is_import_path

# The trial keys each solver of `raygen.hypergrad.SOLVERS` uses ("sketch_every" goes to the bilevel
# optimiser, the rest to the solver); tests check this matches the registry. Kept here as names so
# that parsing a job file does not import torch.
SOLVER_KNOBS = {
    "nystrom": ("rank", "rho"),
    "randomized_nystrom": ("rank", "rho", "sketch_every"),
    "nystrom_pcg": ("rank", "rho", "iters", "tol", "sketch_every"),
    "cg": ("iters",),
    "reference_cg": ("iters", "alpha"),
    "neumann": ("iters", "alpha"),
    "exact": (),
}
SOLVER_NAMES = tuple(SOLVER_KNOBS)
BASELINES = ("random", "optuna")
OPTIONAL_METRICS = ("val_acc", "test_loss", "test_acc")  # reported when the problem's evaluate gives them
TASKS = ("weight_decay", "reweight", "distill")  # raygen.hypergrad.tasks.TASKS, named without importing torch
EXPERIMENT = "hypergrad"


@dataclasses.dataclass
class TuneHypergradConfig(Config):
    name: str = "tune_hypergrad"
    task: str = "reweight"  # a built-in task (TASKS) or pkg.module:make_problem
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # make_problem's keyword arguments
    imbalance: float = bounded(50.0, ge=1)  # reweight: largest / smallest class size
    per: Literal["class", "example"] = "example"  # reweight: one weight per example (the paper's form) or per class
    images_per_class: int = bounded(1, ge=1)  # distill
    # search space (flat lists; each trial samples one value of each)
    solvers: list[str] = dataclasses.field(default_factory=lambda: ["nystrom", "nystrom_pcg", "cg", "neumann"])
    ranks: list[int] = bounded([5, 10], ge=1)  # nystrom, randomized_nystrom, nystrom_pcg
    rhos: list[float] = bounded([0.01, 0.1, 1.0], gt=0)  # the same three
    iters: list[int] = bounded([5, 10], ge=1)  # cg, neumann; nystrom_pcg: at most
    alphas: list[float] = bounded([0.01, 0.1], gt=0)  # neumann
    tols: list[float] = bounded([1e-4], gt=0)  # nystrom_pcg: stop at |r| <= tol |v|
    sketch_every: list[int] = bounded([1], ge=1)  # sketched solvers: refresh interval
    outer_lrs: list[float] = bounded([0.3, 1.0], gt=0)
    unrolls: list[int] = bounded([50], ge=1)
    seeds: list[int] = bounded([0], ge=0)
    num_samples: int = bounded(2, ge=1)  # trials per solver
    max_outer_steps: int = bounded(20, ge=1)
    inner_lr: float = bounded(0.1, gt=0)
    outer_optimizer: Literal["sgd", "adam"] = "sgd"
    outer_momentum: float = 0.9
    # rhos relative to the inner Hessian's λ_max (power iteration each outer step) or absolute
    rho_scale: Literal["lambda_max", "absolute"] = "lambda_max"
    power_iters: int = bounded(3, ge=1)  # λ_max estimate: products per outer step (warm-started)
    reset_inner: bool = False  # True: θ back to its initial value before every outer step (reference protocol)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = bounded(5, ge=1)  # ASHA: outer steps before a trial can be stopped
    reduction_factor: int = bounded(2, ge=2)
    # black-box baselines over the task's global hyperparameter (empty list: none)
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["random", "optuna"])
    baseline_samples: int = bounded(4, ge=1)
    checkpoint_every: int = bounded(5, ge=1)  # outer steps between trial checkpoints
    cpus_per_trial: float = bounded(1.0, gt=0)
    gpus_per_trial: float = bounded(0.0, ge=0)  # fractions share a GPU (raygen.device)

    def validate(self) -> None:
        super().validate()
        check(self.task in TASKS or is_import_path(self.task), "task",
              f"unknown task {self.task!r}; valid: {', '.join(TASKS)} or an import path pkg.module:make_problem")
        check(not self.task_options or self.task not in TASKS, "task_options",
              "only for a task given by import path; the built-in tasks take imbalance, per, images_per_class")
        check(bool(self.solvers), "solvers", "list at least one solver")
        for s in self.solvers:
            check(s in SOLVER_NAMES, "solvers", f"unknown solver {s!r}; valid: {', '.join(SOLVER_NAMES)}")
        for b in self.baselines:
            check(b in BASELINES, "baselines", f"unknown baseline {b!r}; valid: {', '.join(BASELINES)}")
        check(not (self.baselines and self.task == "distill"), "baselines",
              "the distill task has no global hyperparameter for black-box search; set baselines: []")
        for key in ("ranks", "rhos", "iters", "alphas", "tols", "sketch_every", "outer_lrs", "unrolls", "seeds"):
            check(bool(getattr(self, key)), key, "must list at least one value")

    def task_kwargs(self) -> dict[str, Any]:
        if self.task == "reweight":
            return {"imbalance": self.imbalance, "per": self.per}
        if self.task == "distill":
            return {"images_per_class": self.images_per_class}
        return dict(self.task_options)


CONFIG = TuneHypergradConfig


def solver_kwargs(solver: str, trial: dict[str, Any]) -> dict[str, Any]:
    """The sampled settings that this solver takes (the others in the trial config are ignored)."""
    return {k: trial[k] for k in SOLVER_KNOBS.get(solver, ()) if k != "sketch_every"}


def setting(trial: dict[str, Any]) -> str:
    """A short human-readable description of a trial's settings, for tables."""
    solver = trial["solver"]
    if solver == "none":
        return f"{trial['global_name']}={trial['global']:.4g}"
    parts = [f"{k}={trial[k]}" for k in SOLVER_KNOBS[solver]]
    return ", ".join(parts + [f"outer_lr={trial['outer_lr']}", f"unroll={trial['unroll']}", f"seed={trial['seed']}"])


def solver_generator(seed: int):
    """The generator of a trial's solver draws (Nyström columns, sketches, λ_max starts): stream
    HPO_SOLVER, whose legacy key (the seed itself) keeps the draws of the integer-seeded trials."""
    from raygen.seeds import Stream, torch_generator

    return torch_generator(seed, Stream.HPO_SOLVER)


def task_generators(seed: int) -> dict[str, Any]:
    """The generators `make_task` takes, from the run seed's named streams (legacy keys: the draws of
    the integer-seeded tasks before, so published figures reproduce)."""
    from raygen.seeds import Stream, torch_generator

    return {"data": torch_generator(seed, Stream.HPO_TASK), "init": torch_generator(seed, Stream.HPO_INIT)}


def load_state(checkpoint_dir: Path) -> dict[str, Any]:
    """A trial checkpoint's state: tensors and numbers only, so a pickle planted in a checkpoint runs no code."""
    from raygen.train_loop import load_weights

    return load_weights(checkpoint_dir / "state.pt", "start the run over with --fresh")


def run_trial(trial: dict[str, Any], job: dict[str, Any], import_dirs: tuple[str, ...] = ()) -> None:
    """The Tune function trainable: one bilevel optimisation, one `tune.report` per outer step.
    `import_dirs`: the driver's working directory, where an import-path task may live."""
    import torch
    from ray import tune

    from raygen.device import device_for
    from raygen.hypergrad.bilevel import BilevelOptimizer
    from raygen.hypergrad.tasks import make_task
    from raygen.imports import working_dirs
    from raygen.threads import use_one_thread

    use_one_thread()
    config = TuneHypergradConfig.from_dict(job)
    device = device_for("gpus_per_trial", config.gpus_per_trial)
    task = make_task(config.task, **task_generators(trial["seed"]), device=device,
                     search=(*working_dirs(), *import_dirs), **config.task_kwargs())
    solver = trial["solver"]
    if solver == "none":  # black-box baseline: hyperparameters fixed at the sampled global value
        task.hparams = task.global_hparam.to_raw(trial["global"])
    opt = BilevelOptimizer(
        task,
        solver=solver,
        solver_kwargs=solver_kwargs(solver, trial),
        unroll=trial["unroll"],
        inner_lr=config.inner_lr,
        outer_lr=trial["outer_lr"],
        outer_momentum=config.outer_momentum,
        outer_optimizer=config.outer_optimizer,
        generator=solver_generator(trial["seed"]),
        sketch_every=trial["sketch_every"] if "sketch_every" in SOLVER_KNOBS.get(solver, ()) else 1,
        rho_scale=config.rho_scale,
        power_iters=config.power_iters,
        reset_inner=config.reset_inner,
    )
    resumed = tune.get_checkpoint()
    elapsed = 0.0
    if resumed is not None:
        with resumed.as_directory() as d:
            state = load_state(Path(d))
        opt.load_state_dict(state["optimizer"])
        elapsed = state["elapsed"]
    while opt.outer_step < config.max_outer_steps:
        start = time.perf_counter()
        record = opt.step()
        elapsed += time.perf_counter() - start
        metrics = {
            "val_loss": record["val_loss"],
            **{k: record[k] for k in OPTIONAL_METRICS if k in record},  # a user's problem may report only val_loss
            "inner_loss": record["inner_loss"],
            "inner_grad_norm": record["inner_grad_norm"],
            "outer_step": record["outer_step"],
            "hypergrad_seconds": record.get("hypergrad_seconds", 0.0),
            "skipped_steps": record["skipped_steps"],
            "skipped_reason": record.get("skipped_reason", ""),
            "sketch_hvps_saved": record.get("sketch_hvps_saved", 0),
            "trial_seconds": elapsed,
            **({"lambda_max": record["lambda_max"]} if "lambda_max" in record else {}),  # rho-scaled solvers only
        }
        if opt.outer_step % config.checkpoint_every == 0 or opt.outer_step == config.max_outer_steps:
            with tempfile.TemporaryDirectory() as d:
                torch.save({"optimizer": opt.state_dict(), "elapsed": elapsed}, Path(d) / "state.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)


def _space(config: TuneHypergradConfig) -> dict[str, Any]:
    from ray import tune

    return {
        "solver": tune.grid_search(list(config.solvers)),
        "rank": tune.choice(config.ranks),
        "rho": tune.choice(config.rhos),
        "iters": tune.choice(config.iters),
        "alpha": tune.choice(config.alphas),
        "tol": tune.choice(config.tols),
        "sketch_every": tune.choice(config.sketch_every),
        "outer_lr": tune.choice(config.outer_lrs),
        "unroll": tune.choice(config.unrolls),
        "seed": tune.choice(config.seeds),
    }


def _baseline_space(config: TuneHypergradConfig, g) -> dict[str, Any]:
    from ray import tune

    sample = tune.loguniform if g.log else tune.uniform
    return {
        "solver": "none",
        "global": sample(g.low, g.high),
        "global_name": g.name,
        "outer_lr": config.outer_lrs[0],  # unused by "none"; kept so every trial has the same keys
        "unroll": config.unrolls[0],
        "seed": config.seeds[0],
    }


def _describe(trial: dict[str, Any], result: dict[str, Any]) -> str:
    """The progress line's text for a finished trial."""
    accuracy = f" test_acc={result['test_acc']:.3f}" if "test_acc" in result else ""
    return f"{trial['solver']} val_loss={result['val_loss']:.4f}{accuracy}"


def _fit(trainable, run_dir, name: str, space: dict, search_alg, scheduler, num_samples: int, total: int):
    """Run (or resume, when the run dir holds an unfinished experiment `name`) one Tuner; return (results, seconds)."""
    from ray import tune

    from raygen.workloads import tuning

    tune_config = tune.TuneConfig(
        metric="val_loss", mode="min", search_alg=search_alg, scheduler=scheduler, num_samples=num_samples
    )
    return tuning.fit(trainable, storage=run_dir.ray_storage(), name=name, param_space=space, total=total, label=name,
                      tune_config=tune_config, describe=_describe)


def _collect(results, method_of) -> list[dict[str, Any]]:
    """One dict per trial: its config, per-step history and final metrics (errored trials flagged)."""
    from raygen.workloads import tuning

    trials = []
    for result, error in tuning.outcomes(results):
        history = result.metrics_dataframe
        rows = [] if history is None else history.to_dict("records")
        trials.append(
            {
                "method": method_of(result.config),
                "config": {k: v for k, v in result.config.items()},
                "setting": setting(result.config),
                "history": [
                    {k: r[k] for k in ("outer_step", "val_loss", "val_acc", "test_acc", "hypergrad_seconds", "skipped_steps",
                                           "sketch_hvps_saved", "inner_grad_norm", "lambda_max") if k in r}
                    for r in rows
                ],
                "error": error,
                "path": result.path,
            }
        )
    return trials


def _summarise(trials: list[dict[str, Any]], seconds: dict[str, float], max_steps: int) -> dict[str, Any]:
    methods = {}
    for method in dict.fromkeys(t["method"] for t in trials):
        mine = [t for t in trials if t["method"] == method]
        done = [t for t in mine if t["history"]]
        row: dict[str, Any] = {
            "trials": len(mine),
            "errored": sum(t["error"] is not None for t in mine),
            "tuner_seconds": seconds[method if method in seconds else EXPERIMENT],
        }
        if done:
            best = min(done, key=lambda t: t["history"][-1]["val_loss"])
            last = best["history"][-1]
            hg = [h["hypergrad_seconds"] for t in done for h in t["history"] if h["hypergrad_seconds"] > 0]
            row.update(
                best_setting=best["setting"],
                final_val_loss=last["val_loss"],
                final_val_acc=last.get("val_acc"),
                final_test_acc=last.get("test_acc"),
                outer_steps=last["outer_step"],
                skipped_steps=last["skipped_steps"],
                sketch_hvps_saved=last["sketch_hvps_saved"],
                inner_grad_norm=last["inner_grad_norm"],
                lambda_max=last.get("lambda_max"),
                hypergrad_ms=1000 * sum(hg) / len(hg) if hg else None,
                finished_trials=sum(t["history"][-1]["outer_step"] == max_steps for t in done),
            )
        methods[method] = row
    return methods


def _markdown(config: TuneHypergradConfig, methods: dict[str, Any], info: dict[str, Any], plot: str,
              device: str) -> str:
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    lines = [
        f"# raygen tune: {config.task} ({config.name})",
        "",
        f"Task info: `{json.dumps(info, default=str)}`. Trials ran on {device}. Outer steps per trial: "
        f"{config.max_outer_steps}; "
        f"scheduler: {config.scheduler}; seeds: {config.seeds}; rho scale: {config.rho_scale}; "
        f"θ reset every outer step: {config.reset_inner}.",
        "",
        "Best trial per method (by final validation loss; ASHA may have stopped other trials early). "
        "Hypergradient time is the mean over all outer steps of all the method's trials; Tuner time is "
        "the wall-clock time of the method's whole search (the gradient-based solvers share one Tuner). "
        "‖∇θ f‖ is the inner gradient norm where the best trial's last hypergradient was taken (implicit "
        "differentiation assumes 0); λ_max its inner Hessian's top-eigenvalue estimate (rho-scaled solvers).",
        "",
        "| method | trials (finished / errored) | best setting | outer steps | val loss | val acc | test acc | skipped steps "
        "| hypergrad ms | HVPs saved by sketch reuse | ‖∇θ f‖ | λ_max | Tuner s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in methods.items():
        lines.append(
            f"| {method} | {r['trials']} ({r.get('finished_trials', 0)} / {r['errored']}) | {r.get('best_setting', '–')} "
            f"| {r.get('outer_steps', '–')} | {fmt(r.get('final_val_loss'), '.4f')} | {fmt(r.get('final_val_acc'), '.3f')} "
            f"| {fmt(r.get('final_test_acc'), '.3f')} | {r.get('skipped_steps', '–')} "
            f"| {fmt(r.get('hypergrad_ms'), '.1f')} | {r.get('sketch_hvps_saved', '–')} "
            f"| {fmt(r.get('inner_grad_norm'), '.2e')} | {fmt(r.get('lambda_max'), '.3g')} | {r['tuner_seconds']:.1f} |"
        )
    lines += ["", f"![validation loss per outer step]({plot})", ""]
    return "\n".join(lines)


def _plot(trials: list[dict[str, Any]], methods: dict[str, Any]):
    """Validation loss per outer step: every trial faint, each method's best bold."""
    from raygen.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods):
        color = colors[i % len(colors)]
        mine = [t for t in trials if t["method"] == method and t["history"]]
        for t in mine:
            ax.plot([h["outer_step"] for h in t["history"]], [h["val_loss"] for h in t["history"]],
                    color=color, alpha=0.25, lw=0.8)
        if mine:
            best = min(mine, key=lambda t: t["history"][-1]["val_loss"])
            ax.plot([h["outer_step"] for h in best["history"]], [h["val_loss"] for h in best["history"]],
                    color=color, lw=2, label=f"{method} (best)")
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation loss")
    ax.legend()
    fig.tight_layout()
    return fig


def run(config: TuneHypergradConfig, *, verbose: bool = False) -> dict[str, Any]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)

    from ray import tune

    from raygen import runtime
    from raygen.device import trial_resources
    from raygen.hypergrad.tasks import make_task
    from raygen.imports import working_dirs
    from raygen.rundir import RunDir

    driver_dirs = working_dirs()  # read once, at the start: where the trials look for an import-path task
    # bad settings and a broken problem fail here, on the driver's CPU, before Ray starts or anything is written
    task = make_task(config.task, **task_generators(config.seeds[0]), search=driver_dirs, **config.task_kwargs())
    task.check()
    if config.baselines and task.global_hparam is None:
        raise UserError(f"config key 'baselines': task {config.task!r} has no global_hparam for black-box search; "
                        "set baselines: [] or give the BilevelProblem a global_hparam")
    runtime.init(verbose=verbose)
    resources, where = trial_resources(config.cpus_per_trial, config.gpus_per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, job=config.to_dict(), import_dirs=driver_dirs), resources)
    run_dir = RunDir(config)

    def scheduler():
        if config.scheduler == "fifo":
            return FIFOScheduler()
        return ASHAScheduler(time_attr="training_iteration", max_t=config.max_outer_steps,
                             grace_period=min(config.grace_period, config.max_outer_steps),
                             reduction_factor=config.reduction_factor)

    results, seconds = {}, {}
    results[EXPERIMENT], seconds[EXPERIMENT] = _fit(
        trainable, run_dir, EXPERIMENT, _space(config), BasicVariantGenerator(random_state=config.seed),
        scheduler(), config.num_samples, total=config.num_samples * len(config.solvers),
    )
    for baseline in config.baselines:
        space = _baseline_space(config, task.global_hparam)
        search = (BasicVariantGenerator(random_state=config.seed) if baseline == "random"
                  else OptunaSearch(metric="val_loss", mode="min", seed=config.seed))
        results[baseline], seconds[baseline] = _fit(
            trainable, run_dir, f"baseline_{baseline}", space, search, FIFOScheduler(), config.baseline_samples,
            total=config.baseline_samples,
        )

    trials = _collect(results[EXPERIMENT], lambda c: c["solver"])
    for baseline in config.baselines:
        trials += _collect(results[baseline], lambda c, b=baseline: b)
    methods = _summarise(trials, seconds, config.max_outer_steps)
    if not any("final_val_loss" in r for r in methods.values()):
        errors = [t["error"] for t in trials if t["error"]]
        raise UserError(f"every trial failed; first error: {errors[0] if errors else 'no results'}")

    for method in methods:  # TensorBoard + metrics.jsonl: the best trial's curve per method
        mine = [t for t in trials if t["method"] == method and t["history"]]
        if mine:
            best = min(mine, key=lambda t: t["history"][-1]["val_loss"])
            for h in best["history"]:
                run_dir.log(int(h["outer_step"]), **{f"{k}/{method}": h[k] for k in ("val_loss", "val_acc") if k in h})

    plot = "val_loss.png"
    run_dir.save_figure(plot, _plot(trials, methods), dpi=120)
    run_dir.write_text("trials.json", json.dumps(trials, indent=1, default=str))
    summary = {
        "task": config.task,
        "task_info": task.info,
        "device": where,
        "methods": methods,
        "trials": len(trials),
        "plot": plot,
        "experiments": [run_dir.child_uri(name) for name in [EXPERIMENT] + [f"baseline_{b}" for b in config.baselines]],
    }
    report = _markdown(config, methods, task.info, plot, where)
    run_dir.write_report(summary, report)
    run_dir.close()
    if verbose:
        print(report)
    return summary
