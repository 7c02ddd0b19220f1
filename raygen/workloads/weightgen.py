"""`raygen weightgen`: neural-network weight generation by diffusion (p-diff, D2NWG) on Ray.

Stages, each a run directory of its own under this run's directory (`<storage_path>/<name>/`):
a re-run reuses every stage whose settings match and trains only what is missing.

    zoo/          the model zoo: the `raygen zoo` workload (`raygen.workloads.zoo`) run with this
                  config's zoo keys as `<run dir>/zoo` (parts in zoo/parts/, its own report); a
                  finished zoo is reused, not recollected. With `zoo: <uri>` an existing zoo
                  (a zoo run directory or its parts/) is used instead and nothing is collected.
    ae/           parameter autoencoder (`raygen.weightgen.train.train_autoencoder`, a `train_func`
                  on the shared scaffold `raygen.train_loop`: in this process or on Ray Train workers).
    diffusion/    latent EDM diffusion (+ the DeepSets dataset encoder in tasks mode), EMA
                  (`raygen.weightgen.train.train_diffusion`, same scaffold).
    generated/    n_generate weight vectors per task as parts like the zoo
                  (`raygen.weightgen.generate`, fanned out by `raygen.fanout`); sample i is drawn
                  from its own seed (`raygen.seeds.per_item_seeds`), so parts are
                  bit-identical for any actor count.
    report.md/json, accuracy histogram, memorisation and fine-tuning plots (`raygen.weightgen.report`).

Parallel units are fixed chunks (jobs for the zoo, ids for generation), so a retried or re-run
chunk rewrites the same part and the result does not depend on how many actors ran it. The data
of every stage is the zoo's (`raygen.weightgen.zoo.zoo_splits` of its metadata). This module is
the orchestration only: the trainers, the generation worker and the report live in
`raygen.weightgen`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Literal

import numpy as np

import torch

from raygen import device, fanout, runtime
from raygen.config import bounded, check
from raygen.errors import UserError
from raygen.parts import Chunks, PartStore
from raygen.rundir import RunDir
from raygen.train_loop import check_workers_fit, checkpoint_name, launch
from raygen.weightgen import report
from raygen.weightgen.generate import Generator
from raygen.weightgen.store import ID_COLUMN, read_zoo
from raygen.weightgen.train import (StageConfig, load_autoencoder, load_diffusion, train_autoencoder,
                                    train_diffusion)
from raygen.weightgen.zoo import define_tasks, load_source, member_layout
from raygen.workloads import zoo
from raygen.workloads.zoo import ZooConfig


@dataclasses.dataclass
class WeightgenConfig(ZooConfig):
    """The zoo keys (data source, tasks, members: `ZooConfig`) plus the later stages' keys."""

    RESUME_FREE = ZooConfig.RESUME_FREE | {"train_workers", "max_failures"}

    name: str = "weightgen_pdiff"
    zoo: str = ""  # an existing zoo (a zoo run directory or its parts/) to use instead of collecting one
    heldout_tasks: list[int] = dataclasses.field(default_factory=list)  # task ids kept out of the zoo
    # parameter autoencoder
    ae_kind: Literal["mlp", "conv"] = "mlp"
    # z-scoring over the zoo: per weight keeps a trajectory's tiny per-coordinate spread (per tensor
    # left p-diff's 200 heads 0.009 apart, under the latent noise); auto = weight for trajectory zoos
    normalize: Literal["auto", "weight", "tensor"] = "auto"
    latent_dim: int = bounded(32, ge=1)
    ae_hidden: int = bounded(256, ge=1)
    ae_steps: int = bounded(1500, ge=1)
    ae_lr: float = bounded(1e-3, gt=0)
    ae_batch: int = bounded(50, ge=1)
    input_noise: float = bounded(0.001, ge=0)
    latent_noise: float = bounded(0.1, ge=0)
    # latent diffusion
    diff_steps: int = bounded(3000, ge=1)
    diff_lr: float = bounded(1e-3, gt=0)
    diff_batch: int = bounded(64, ge=1)
    diff_hidden: int = bounded(256, ge=1)
    diff_depth: int = bounded(3, ge=1)
    ema_decay: float = bounded(0.999, ge=0, lt=1)
    cond_dim: int = bounded(64, ge=1)
    support_shots: int = bounded(5, ge=1)
    # fixed: the first support_shots images per class, always; random: drawn anew at every diffusion
    # training step and for every generated vector (D2NWG's protocol: the encoder cannot key on one input)
    support_draw: Literal["fixed", "random"] = "fixed"
    set_encoder: Literal["deepsets", "set_transformer"] = "deepsets"  # tasks mode's dataset encoder
    encoder_training: Literal["joint", "contrastive"] = "joint"  # contrastive: D2NWG's pretraining, then frozen
    contrastive_steps: int = bounded(1000, ge=0)  # contrastive: the first diff_steps align the encoder to the AE latents
    sample_steps: int = bounded(32, ge=1)
    # noise levels per latent dimension, from its std over the zoo (dim), or from the latents' one
    # scalar std (scalar: runs before this key; their diffusion stage is refused with dim, not resumed)
    latent_scale: Literal["dim", "scalar"] = "dim"
    # generation, evaluation
    n_generate: int = bounded(100, ge=1)  # per task
    finetune_steps: int = bounded(200, ge=0)
    # fine-tuning accuracy logged every this many steps; 1 (the default) makes steps_to_90 exact to the
    # step (at 10, 0.5 vs 0.56 of random init's steps was one logging interval)
    finetune_every: int = bounded(1, ge=1)
    finetune_models: int = bounded(3, ge=1)
    finetune_lr: float = bounded(0.003, gt=0)
    # training runtime
    train_workers: int = bounded(0, ge=0)  # 0: AE and diffusion train in this process; N: Ray Train workers
    use_gpu: bool = False  # one GPU per Ray Train worker (needs train_workers >= 1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # Accelerate's; auto: bf16 on a GPU, else no
    keep_checkpoints: int = bounded(2, ge=1)
    max_failures: int = bounded(1, ge=0)
    log_every: int = bounded(100, ge=1)

    def validate(self) -> None:
        super().validate()
        if self.encoder_training == "contrastive":
            check(0 < self.contrastive_steps < self.diff_steps, "contrastive_steps",
                  f"must be in 1..diff_steps-1 (diff_steps is {self.diff_steps}): the rest trains the diffusion")
        check(self.finetune_steps >= self.finetune_every, "finetune_steps", "must be >= finetune_every")
        check(not self.use_gpu or self.train_workers >= 1, "use_gpu",
              "GPUs are reserved by Ray Train workers: set train_workers >= 1 (one GPU each)")
        check(self.use_gpu or self.mixed_precision in ("auto", "no"), "mixed_precision",
              f"{self.mixed_precision} is for GPU training: set use_gpu: true (or mixed_precision: auto)")
        if self.mode == "trajectory":
            check(not self.heldout_tasks, "heldout_tasks", "trajectory mode has no held-out tasks; use mode: tasks")
        check(len(set(self.heldout_tasks)) == len(self.heldout_tasks), "heldout_tasks", "lists a task twice")
        check(all(t >= 0 for t in self.heldout_tasks), "heldout_tasks", "task ids must be >= 0")
        inside = sorted(t for t in self.heldout_tasks if t < self.zoo_tasks)
        check(not inside, "heldout_tasks",
              f"task {inside[0] if inside else ''} is also in the zoo (zoo tasks are 0..{self.zoo_tasks - 1}); "
              "hold out ids >= zoo_tasks")


CONFIG = WeightgenConfig


# ====================================================================== stages 2-3: training


def stage_config(cfg: WeightgenConfig, stage: str, root: str, zoo: str, autoencoder: str = "") -> StageConfig:
    common = dict(storage_path=root, seed=cfg.seed, zoo=zoo, mode=cfg.mode, keep_checkpoints=cfg.keep_checkpoints,
                  num_workers=cfg.train_workers, max_failures=cfg.max_failures, log_every=cfg.log_every,
                  use_gpu=cfg.use_gpu, mixed_precision=cfg.mixed_precision)
    if stage == "ae":
        normalize = cfg.normalize if cfg.normalize != "auto" else "weight" if cfg.mode == "trajectory" else "tensor"
        return StageConfig(name="ae", stage="ae", ae_kind=cfg.ae_kind, normalize=normalize, latent_dim=cfg.latent_dim,
                           hidden=cfg.ae_hidden, input_noise=cfg.input_noise, latent_noise=cfg.latent_noise,
                           steps=cfg.ae_steps, lr=cfg.ae_lr, batch_size=cfg.ae_batch,
                           checkpoint_every=max(1, cfg.ae_steps // 3), **common)
    return StageConfig(name="diffusion", stage="diffusion", autoencoder=autoencoder, hidden=cfg.diff_hidden,
                       depth=cfg.diff_depth, cond_dim=cfg.cond_dim, support_shots=cfg.support_shots,
                       support_draw=cfg.support_draw, latent_scale=cfg.latent_scale,
                       set_encoder=cfg.set_encoder, encoder_training=cfg.encoder_training,
                       contrastive_steps=cfg.contrastive_steps, steps=cfg.diff_steps, lr=cfg.diff_lr,
                       batch_size=cfg.diff_batch, ema_decay=cfg.ema_decay,
                       checkpoint_every=max(1, cfg.diff_steps // 3), **common)


def _train_stage(stage: StageConfig, train_func, verbose: bool) -> str:
    """Run a stage in this process or on Ray Train; returns the URI of its final checkpoint."""
    run_dir = RunDir(stage)  # refuses a stage dir of other settings
    done = checkpoint_name(stage.steps)
    if run_dir.is_complete(done):  # its last checkpoint: finished (RunDir has already dropped the old report)
        print(f"       {stage.stage}: finished already, reusing {run_dir.child_uri(done)}")
        metrics, latest = json.loads(run_dir.read_text("metrics.jsonl").splitlines()[-1]), done
    else:
        metrics, latest = launch(train_func, stage, run_dir, num_workers=stage.num_workers,
                                 keep_checkpoints=stage.keep_checkpoints, max_failures=stage.max_failures,
                                 use_gpu=stage.use_gpu, verbose=verbose)
    if latest is None:
        raise UserError(f"{stage.stage} training under {run_dir.uri} wrote no checkpoint; see its metrics.jsonl")
    run_dir.write_report({"stage": stage.stage, "checkpoint": run_dir.child_uri(latest), "final": metrics},
                         f"# weightgen {stage.stage} stage\n\nfinal metrics: {json.dumps(metrics)}\n")
    run_dir.close()
    return run_dir.child_uri(latest)


# ====================================================================== stage 4: generation


def generate(cfg: WeightgenConfig, run_dir, ae_uri: str, diff_uri: str, metadata: dict,
             task_ids: list[int], where: str) -> dict[str, Any]:
    """n_generate vectors per task as parts (`raygen.weightgen.generate.Generator` on Ray tasks, each
    reserving gpus_per_member); `where`: `raygen.device.describe` of their device."""
    store = PartStore(run_dir.child("generated"), id_column=ID_COLUMN)
    chunks = Chunks(len(task_ids) * cfg.n_generate, cfg.n_generate)
    settings = {"n_generate": cfg.n_generate, "tasks": task_ids, "sample_steps": cfg.sample_steps,
                "ae": ae_uri, "diffusion": diff_uri, "seed": cfg.seed}
    if cfg.support_draw != "fixed":  # absent when fixed: runs made before the key resume as they were
        settings["support_draw"] = cfg.support_draw
    fanout.settle(store, settings)
    print(f"[4/4] generating {cfg.n_generate} weight vectors for each of {len(task_ids)} task(s) "
          f"on {cfg.num_actors} workers" + (f" × {where}" if cfg.gpus_per_member else ""))
    # the zoo's metadata, but the generation workers' own device
    done = fanout.run_chunks(fanout.Output(store, chunks, {**metadata, "device": where}), Generator,
                             {"metadata": metadata, "ae_uri": ae_uri, "diff_uri": diff_uri, "task_ids": task_ids,
                              "seed": cfg.seed, "n_generate": cfg.n_generate, "support_shots": cfg.support_shots,
                              "sample_steps": cfg.sample_steps, "support_draw": cfg.support_draw,
                              "gpus": cfg.gpus_per_member},
                             what="generated", workers=cfg.num_actors, run_dir=run_dir, num_gpus=cfg.gpus_per_member)
    # a run that drew nothing reports what its reused parts were drawn on (gpus_per_member may change)
    return {"uri": store.loc.uri, "models": chunks.n, "written": done.rows, "seconds": done.seconds,
            "device": where if done.rows else store.metadata().get("device", "cpu")}


def devices(cfg: WeightgenConfig) -> dict[str, str]:
    """Where training and generation compute (`raygen.device.describe`), checked against the nodes
    before anything is written: a GPU no node has is refused on a local Ray, waited for on a cluster."""
    runtime.check_fits({"CPU": 1, "GPU": cfg.gpus_per_member}, "gpus_per_member")
    if cfg.train_workers:
        check_workers_fit(cfg.train_workers, cfg.use_gpu)
    return {"training": device.probe("use_gpu", 1, 1.0 if cfg.use_gpu else 0.0, off="use_gpu=false"),
            "generation": device.probe("gpus_per_member", 1, cfg.gpus_per_member)}


# ====================================================================== the workload


def task_defs(spec: dict[str, Any], family: str, seed: int, classes_per_task: int, zoo_ids,
              heldout_ids) -> tuple[dict[int, dict], dict[int, dict]]:
    """(zoo task id -> definition, held-out task id -> definition) over the data of `spec`; a
    held-out task whose definition equals a zoo task's is an error (it would not be held out)."""
    defs = define_tasks(load_source(spec), family, sorted(set(zoo_ids) | set(heldout_ids)), seed, classes_per_task)
    zoo, held = {t: defs[t] for t in zoo_ids}, {t: defs[t] for t in heldout_ids}
    for t, d in held.items():
        same = [z for z, dz in zoo.items() if dz == d]
        if same:
            raise UserError(f"held-out task {t} defines the same task as zoo task {same[0]} ({d}); "
                            "choose other heldout_tasks or a larger task family")
    return zoo, held


def preflight(config: WeightgenConfig) -> tuple:
    """Bad data and tasks fail before Ray starts or anything is collected (an existing zoo is checked
    once read): the zoo's and the held-out tasks' definitions, or () for an existing zoo."""
    if config.zoo:
        return ()
    return task_defs(config.source_spec(), config.task_family, config.seed, config.classes_per_task,
                     range(config.zoo_tasks), config.heldout_tasks)


def run(config: WeightgenConfig, *, verbose: bool = False, checked: tuple | None = None) -> dict[str, Any]:
    """`checked`: preflight(config)'s result when the caller (the CLI) has run it already."""
    if checked is None:
        preflight(config)
    runtime.init(verbose=verbose)
    where = devices(config)
    run_dir = RunDir(config)
    root = run_dir.uri
    started = time.perf_counter()
    if config.zoo:
        print(f"[1/4] zoo: using {config.zoo}")
        zoo_stage = {"uri": config.zoo, "written": 0}
    else:
        zoo_config = zoo.stage_config(config, root)
        print(f"[1/4] zoo stage in {zoo_config.run_dir}")
        zoo_stage = {k: v for k, v in zoo.run(zoo_config, verbose=verbose).items()
                     if k in ("run_dir", "uri", "parts", "written", "seconds")}
    zoo_uri = zoo_stage["uri"]
    thetas, cols, meta = read_zoo(zoo_uri)
    zoo_stage["device"] = meta.get("device", "cpu")  # zoos made before devices were recorded ran on the CPU
    target = member_layout({**meta["arch"], "width": config.width, "feature_dim": config.feature_dim},
                           config.param_subset if config.mode == "trajectory" else "all")
    target.check_matches(type(target).from_dict(meta["layout"]), f"zoo {zoo_uri}")
    overlap = sorted(set(config.heldout_tasks) & set(cols["task_id"].tolist()))
    if overlap:
        raise UserError(f"held-out task {overlap[0]} is in the zoo at {zoo_uri}; hold out a task the zoo lacks")
    if config.heldout_tasks:  # defined like the zoo's tasks: its data, family and seed
        _, held_tasks = task_defs(meta["source"], meta["task_family"], meta["seed"], meta["classes_per_task"],
                                  [int(t) for t in meta["tasks"]], config.heldout_tasks)
        meta["tasks"].update({str(t): d for t, d in held_tasks.items()})

    on = f" on {config.train_workers} × {where['training']}" if config.use_gpu else ""
    print(f"[2/4] parameter autoencoder ({config.ae_kind}, latent {config.latent_dim}, {config.ae_steps} steps){on}")
    ae_uri = _train_stage(stage_config(config, "ae", root, zoo_uri), train_autoencoder, verbose)
    print(f"[3/4] latent diffusion ({config.diff_steps} steps"
          + (", conditioned on a DeepSets task embedding)" if config.mode == "tasks" else ")") + on)
    diff_uri = _train_stage(stage_config(config, "diffusion", root, zoo_uri, ae_uri), train_diffusion, verbose)
    task_ids = sorted(set(cols["task_id"].tolist())) + list(config.heldout_tasks)
    gen_stage = generate(config, run_dir, ae_uri, diff_uri, meta, task_ids, where["generation"])
    gen, gcols, _ = read_zoo(gen_stage["uri"], "generated set")

    print("       evaluating: originals vs generated vs noise-perturbed vs random init"
          + (", fine-tuning on held-out tasks" if config.heldout_tasks else ""))
    ae, norm, _ = load_autoencoder(ae_uri)
    diagnostics = report.ae_diagnostics(config, thetas, cols, meta, ae, norm)
    warning = report.collapse_warning(diagnostics)
    if warning:
        print(warning)
    on_zoo = np.isin(gcols["task_id"], cols["task_id"])
    table, memo = report.zoo_tables(config, thetas, cols, gen[torch.as_tensor(on_zoo)],
                             {k: v[on_zoo] for k, v in gcols.items()}, meta, norm)
    held = report.heldout_tables(config, thetas, cols, gen, gcols, meta) if config.heldout_tasks else None
    figures = report.plots_of(run_dir, cols, gcols, memo, held)
    summary: dict[str, Any] = {
        "run_dir": root, "report": run_dir.child_uri("report.md"), "mode": config.mode,
        "zoo": {**zoo_stage, "members": len(thetas), "parameters": thetas.shape[1],
                "original": {k: table["original"][k] for k in ("acc_mean", "acc_median", "acc_max", "acc_min")}},
        "generated": gen_stage, "table": table, "ae": diagnostics,
        "memorisation": {k: v for k, v in memo.items() if k != "raw"},
        "diffusion": report.noise_scale(load_diffusion(diff_uri)[0].spec),
        "checkpoints": {"ae": ae_uri, "diffusion": diff_uri}, "seconds": time.perf_counter() - started,
        # per stage (a reused AE or diffusion stage had this use_gpu: it is part of its settings); the
        # report's own evaluation (tables, fine-tuning) runs in this process, on the CPU
        "device": {"zoo": zoo_stage["device"], "ae": where["training"], "diffusion": where["training"],
                   "generation": gen_stage["device"]},
    }
    summary["zoo"]["generated"] = {k: table["generated"][k] for k in ("acc_mean", "acc_median", "acc_max", "acc_min")}
    if held is not None:
        summary["heldout"] = held
    run_dir.write_report(summary, report.markdown(config, summary, figures))
    run_dir.close()
    print(f"zoo original: mean {table['original']['acc_mean']:.2f}% max {table['original']['acc_max']:.2f}%  |  "
          f"generated: mean {table['generated']['acc_mean']:.2f}% max {table['generated']['acc_max']:.2f}%")
    return summary
