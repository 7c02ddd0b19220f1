"""`raygen weightgen`: neural-network weight generation by diffusion (p-diff, D2NWG) on Ray.

Stages, each a run directory of its own under this run's directory (`<storage_path>/<name>/`):
a re-run reuses every stage whose settings match and trains only what is missing.

    zoo/          the model zoo: the `raygen zoo` workload (`raygen.workloads.zoo`) run with this
                  config's zoo keys as `<run dir>/zoo` (parts in zoo/parts/, its own report); a
                  finished zoo is reused, not recollected. With `zoo: <uri>` an existing zoo
                  (a zoo run directory or its parts/) is used instead and nothing is collected.
    ae/           parameter autoencoder (`train_autoencoder`, a `train_func` on the shared
                  scaffold `raygen.train_loop`: in this process or on Ray Train workers).
    diffusion/    latent EDM diffusion (+ the DeepSets dataset encoder in tasks mode), EMA
                  (`train_diffusion`, same scaffold).
    generated/    n_generate weight vectors per task as parts like the zoo; sample i is drawn
                  from its own seed (`raygen.seeds.per_item_seeds`), so parts are
                  bit-identical for any actor count.
    report.md/json, accuracy histogram, memorisation and fine-tuning plots.

Parallel units are fixed chunks (jobs for the zoo, ids for generation), so a retried or re-run
chunk rewrites the same part and the result does not depend on how many actors ran it. The data
of every stage is the zoo's (`raygen.weightgen.zoo.zoo_splits` of its metadata). The zoo is small (hundreds of vectors of ~10^3 floats): each training worker reads it whole
from the parts and draws its own batches from its seeded generator (exact resume).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from raygen.config import Config, check
from raygen.errors import UserError
from raygen.workloads.zoo import ZooConfig

NOISE_SIGMAS = (0.001, 0.05, 0.15)  # p-diff's noise-perturbed originals, in normalised space
AE_FILE, DIFF_FILE = "autoencoder.pt", "diffusion.pt"


@dataclasses.dataclass
class WeightgenConfig(ZooConfig):
    """The zoo keys (data source, tasks, members: `ZooConfig`) plus the later stages' keys."""

    RESUME_FREE = ZooConfig.RESUME_FREE | {"train_workers", "max_failures"}

    name: str = "weightgen_pdiff"
    zoo: str = ""  # an existing zoo (a zoo run directory or its parts/) to use instead of collecting one
    heldout_tasks: list[int] = dataclasses.field(default_factory=list)  # task ids kept out of the zoo
    # parameter autoencoder
    ae_kind: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = 32
    ae_hidden: int = 256
    ae_steps: int = 1500
    ae_lr: float = 1e-3
    ae_batch: int = 50
    input_noise: float = 0.001
    latent_noise: float = 0.1
    # latent diffusion
    diff_steps: int = 3000
    diff_lr: float = 1e-3
    diff_batch: int = 64
    diff_hidden: int = 256
    diff_depth: int = 3
    ema_decay: float = 0.999
    cond_dim: int = 64
    support_shots: int = 5
    set_encoder: Literal["deepsets", "set_transformer"] = "deepsets"  # tasks mode's dataset encoder
    encoder_training: Literal["joint", "contrastive"] = "joint"  # contrastive: D2NWG's pretraining, then frozen
    contrastive_steps: int = 1000  # contrastive: the first diff_steps align the encoder to the AE latents
    sample_steps: int = 32
    # generation, evaluation
    n_generate: int = 100  # per task
    finetune_steps: int = 200
    finetune_every: int = 10
    finetune_models: int = 3
    finetune_lr: float = 0.003
    # training runtime
    train_workers: int = 0  # 0: AE and diffusion train in this process; N: Ray Train workers
    keep_checkpoints: int = 2
    max_failures: int = 1
    log_every: int = 100

    def validate(self) -> None:
        super().validate()
        for key in ("latent_dim", "ae_hidden", "ae_steps", "ae_batch", "diff_steps", "diff_batch", "diff_hidden",
                    "diff_depth", "cond_dim", "support_shots", "sample_steps", "n_generate", "finetune_every",
                    "finetune_models", "keep_checkpoints", "log_every"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        if self.encoder_training == "contrastive":
            check(0 < self.contrastive_steps < self.diff_steps, "contrastive_steps",
                  f"must be in 1..diff_steps-1 (diff_steps is {self.diff_steps}): the rest trains the diffusion")
        for key in ("ae_lr", "diff_lr", "finetune_lr"):
            check(getattr(self, key) > 0, key, "must be > 0")
        check(self.input_noise >= 0 and self.latent_noise >= 0, "input_noise", "noise levels must be >= 0")
        check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        check(self.finetune_steps >= self.finetune_every, "finetune_steps", "must be >= finetune_every")
        check(self.train_workers >= 0, "train_workers", "must be >= 0 (0 = train in this process)")
        if self.mode == "trajectory":
            check(not self.heldout_tasks, "heldout_tasks", "trajectory mode has no held-out tasks; use mode: tasks")
        check(len(set(self.heldout_tasks)) == len(self.heldout_tasks), "heldout_tasks", "lists a task twice")
        inside = sorted(t for t in self.heldout_tasks if 0 <= t < self.zoo_tasks)
        check(not inside, "heldout_tasks",
              f"task {inside[0] if inside else ''} is also in the zoo (zoo tasks are 0..{self.zoo_tasks - 1}); "
              "hold out ids >= zoo_tasks")
        check(all(t >= 0 for t in self.heldout_tasks), "heldout_tasks", "task ids must be >= 0")

CONFIG = WeightgenConfig


# ====================================================================== stages 2-3: training


@dataclasses.dataclass
class StageConfig(Config):
    """One training stage (`ae` or `diffusion`) of a weightgen run; built from the run's config."""

    stage: Literal["ae", "diffusion"] = "ae"
    zoo: str = ""  # URI of the zoo parts
    autoencoder: str = ""  # diffusion: URI of the AE checkpoint directory
    mode: Literal["trajectory", "tasks"] = "trajectory"
    support_shots: int = 5
    ae_kind: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = 32
    hidden: int = 256
    depth: int = 3
    cond_dim: int = 64
    set_encoder: Literal["deepsets", "set_transformer"] = "deepsets"
    encoder_training: Literal["joint", "contrastive"] = "joint"
    contrastive_steps: int = 1000
    input_noise: float = 0.001
    latent_noise: float = 0.1
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 64
    ema_decay: float = 0.999
    log_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_workers: int = 0
    max_failures: int = 1

    def validate(self) -> None:
        super().validate()
        check(bool(self.zoo), "zoo", "must name the zoo's parts directory")
        check(self.batch_size % max(self.num_workers, 1) == 0, "batch_size",
              f"must be divisible by num_workers={self.num_workers}")


def stage_config(cfg: WeightgenConfig, stage: str, root: str, zoo: str, autoencoder: str = "") -> StageConfig:
    common = dict(storage_path=root, seed=cfg.seed, zoo=zoo, mode=cfg.mode, keep_checkpoints=cfg.keep_checkpoints,
                  num_workers=cfg.train_workers, max_failures=cfg.max_failures, log_every=cfg.log_every)
    if stage == "ae":
        return StageConfig(name="ae", stage="ae", ae_kind=cfg.ae_kind, latent_dim=cfg.latent_dim,
                           hidden=cfg.ae_hidden, input_noise=cfg.input_noise, latent_noise=cfg.latent_noise,
                           steps=cfg.ae_steps, lr=cfg.ae_lr, batch_size=cfg.ae_batch,
                           checkpoint_every=max(1, cfg.ae_steps // 3), **common)
    return StageConfig(name="diffusion", stage="diffusion", autoencoder=autoencoder, hidden=cfg.diff_hidden,
                       depth=cfg.diff_depth, cond_dim=cfg.cond_dim, support_shots=cfg.support_shots,
                       set_encoder=cfg.set_encoder, encoder_training=cfg.encoder_training,
                       contrastive_steps=cfg.contrastive_steps, steps=cfg.diff_steps, lr=cfg.diff_lr,
                       batch_size=cfg.diff_batch, ema_decay=cfg.ema_decay,
                       checkpoint_every=max(1, cfg.diff_steps // 3), **common)


def _random_rows(state, tensors: tuple, batch_size: int):
    """Endless batches of random rows drawn from the state's generator (restored on resume)."""
    import torch

    while True:
        idx = torch.randint(len(tensors[0]), (batch_size,), generator=state.generator)
        yield tuple(t[idx] for t in tensors)


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    torch.save(obj, path)


def load_checkpoint_file(checkpoint_uri: str, filename: str) -> dict[str, Any]:
    import torch

    from raygen import storage

    data = storage.read_bytes(storage.resolve(checkpoint_uri).child(filename))
    return torch.load(io.BytesIO(data), weights_only=False)


def _one_thread(fn):
    """The AE, the latent denoiser and the zoo CNNs are tiny: one torch thread per process is fastest,
    and on a loaded machine extra threads only contend (measured ~10x slower with 2 threads)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapped


@_one_thread
def train_autoencoder(config: dict) -> dict:
    """p-diff's parameter autoencoder on the per-tensor-normalised zoo (a Ray Train `train_func`)."""
    import torch

    from raygen.seeds import Stream, torch_generator
    from raygen.train_loop import Schedule, TrainRun, TrainState, fit, seeded
    from raygen.weightgen.autoencoder import ParamAutoencoder
    from raygen.weightgen.normalize import TensorNorm
    from raygen.weightgen.params import ParamLayout

    from raygen.workloads.zoo import read_zoo

    cfg = StageConfig.from_dict(config)
    thetas, _, meta = read_zoo(cfg.zoo)
    layout = ParamLayout.from_dict(meta["layout"])
    norm = TensorNorm.fit(thetas, layout)
    x = norm.normalize(thetas.double()).float()
    run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints)
    try:
        restored = run.store.load(run.rank)
        ae = seeded(cfg.seed, lambda: ParamAutoencoder(layout.numel, cfg.latent_dim, cfg.ae_kind, cfg.hidden,
                                                       input_noise=cfg.input_noise, latent_noise=cfg.latent_noise))
        state = TrainState(modules={"ae": ae}, optimizers={"opt": torch.optim.AdamW(ae.parameters(), lr=cfg.lr)},
                           generator=torch_generator(cfg.seed, Stream.AE_INIT, run.rank))
        if restored is not None:
            state.load_state_dict(restored)
        run.prepare(state)

        def step(state, batch, _step):
            loss = state.modules["ae"](batch[0], state.generator)
            run.accelerator.backward(loss)
            state.optimizers["opt"].step()
            state.optimizers["opt"].zero_grad(set_to_none=True)
            return {"loss": loss.detach()}

        def export(state, directory: Path) -> None:
            module = state.module("ae")
            _save_torch({"spec": module.spec, "weights": module.state_dict(), "norm": norm.to_dict(),
                         "meta": meta}, directory / AE_FILE)

        schedule = Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every)
        return fit(run, state, _random_rows(state, (x,), cfg.batch_size // run.world), step, schedule,
                   export=export, progress={"ae loss": "loss"},
                   diverged_hint=f"lower ae_lr (now {cfg.lr})", unit="models")
    finally:
        run.close()


def load_autoencoder(checkpoint_uri: str):
    """(autoencoder in eval mode, TensorNorm, zoo metadata) from an `ae` checkpoint."""
    from raygen.weightgen.autoencoder import ParamAutoencoder
    from raygen.weightgen.normalize import TensorNorm

    saved = load_checkpoint_file(checkpoint_uri, AE_FILE)
    ae = ParamAutoencoder(**saved["spec"])
    ae.load_state_dict(saved["weights"])
    return ae.eval(), TensorNorm.from_dict(saved["norm"]), saved["meta"]


def task_supports(meta: dict, task_ids: list[int], shots: int, splits: dict | None = None):
    """Support sets [T, C, shots, F] of the given tasks (their training images, label order)."""
    import torch

    from raygen.weightgen.zoo import support_set, task_classes, task_splits, zoo_splits

    splits = splits or zoo_splits(meta)
    out = []
    for t in task_ids:
        task = meta["tasks"][str(t)]
        out.append(support_set(*task_splits(task, splits)["train"], task_classes(task), shots))
    return torch.stack(out)


def encode_zoo(ae, norm, thetas):
    import torch

    with torch.no_grad():
        return ae.encode(norm.normalize(thetas.double()).float())


@_one_thread
def train_diffusion(config: dict) -> dict:
    """Latent EDM diffusion over the AE's latents of the zoo (a Ray Train `train_func`); in tasks mode
    conditioned on the set-encoder embedding of each member's task support set, the encoder either
    trained jointly by the denoising loss or (`encoder_training: contrastive`, D2NWG) aligned to the
    AE latents by the contrastive loss for the first `contrastive_steps` and frozen afterwards.

    Every step runs every module and zero-weights the unused loss, so Ray Train's DDP sees all
    parameters used; a phase's frozen modules get zero gradients and their optimiser is not stepped."""
    import torch

    from raygen.diffusion.ema import EMA
    from raygen.diffusion.losses import DenoisingLoss
    from raygen.seeds import Stream, torch_generator
    from raygen.train_loop import Schedule, TrainRun, TrainState, fit, seeded
    from raygen.weightgen.latent import VectorDenoiser, latent_loss
    from raygen.weightgen.set_encoder import ContrastiveHeads, SetEncoder, contrastive_loss

    from raygen.workloads.zoo import read_zoo

    cfg = StageConfig.from_dict(config)
    ae, norm, meta = load_autoencoder(cfg.autoencoder)
    thetas, cols, zoo_meta = read_zoo(cfg.zoo)
    norm.layout.check_matches(type(norm.layout).from_dict(zoo_meta["layout"]), f"zoo {cfg.zoo}")
    h = encode_zoo(ae, norm, thetas)
    conditional = cfg.mode == "tasks"
    task_ids = sorted(set(cols["task_id"].tolist()))
    task_index = torch.as_tensor(np.searchsorted(task_ids, cols["task_id"]))
    support = task_supports(zoo_meta, task_ids, cfg.support_shots) if conditional else None
    mu, sd = float(h.mean()), float(h.std())
    run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints)
    try:
        restored = run.store.load(run.rank)
        denoiser = seeded(cfg.seed, lambda: VectorDenoiser(h.shape[1], cfg.cond_dim if conditional else 0,
                                                           cfg.hidden, cfg.depth, sigma_data=sd, data_mean=mu))
        modules = {"denoiser": denoiser}
        optimizers = {"denoiser": torch.optim.AdamW(denoiser.parameters(), lr=cfg.lr)}
        contrastive = conditional and cfg.encoder_training == "contrastive"
        if conditional:
            modules["encoder"] = seeded(cfg.seed + 1, lambda: SetEncoder(support.shape[-1], support.shape[1],
                                                                         cond_dim=cfg.cond_dim, kind=cfg.set_encoder))
            if contrastive:
                modules["align"] = seeded(cfg.seed + 2, lambda: ContrastiveHeads(cfg.cond_dim, h.shape[1]))
            optimizers["encoder"] = torch.optim.AdamW([p for k in ("encoder", "align") if k in modules
                                                       for p in modules[k].parameters()], lr=cfg.lr)
        state = TrainState(modules=modules, optimizers=optimizers,
                           emas={k: EMA(modules[k], cfg.ema_decay) for k in ("denoiser", "encoder") if k in modules},
                           generator=torch_generator(cfg.seed, Stream.LATENT_INIT, run.rank))
        if restored is not None:
            state.load_state_dict(restored)
        run.prepare(state)
        loss_fn = DenoisingLoss.at_scale(sd)  # EDM's noise levels relative to the latents' std (see losses.py)

        def step(state, batch, step_index):
            h0, t = batch
            cond, stats = None, {}
            if conditional:  # each task's support set encoded once per batch
                u, inverse = t.cpu().unique(return_inverse=True)
                cond = state.modules["encoder"](support[u].to(h0.device))[inverse.to(h0.device)]
            aligning = contrastive and step_index < cfg.contrastive_steps
            if contrastive:
                c_loss = contrastive_loss(*state.modules["align"](cond, h0), t)
                stats["contrastive"] = c_loss.detach()
                cond = cond.detach()  # the denoising loss never trains a contrastively aligned encoder
            loss = latent_loss(loss_fn, state.modules["denoiser"], h0, cond, state.generator)
            stats["diffusion"] = loss.detach()
            if contrastive:
                loss = c_loss + 0 * loss if aligning else loss + 0 * c_loss
            run.accelerator.backward(loss)
            stepped = ["encoder"] if aligning else ["denoiser"] if contrastive else list(state.optimizers)
            for k in stepped:
                state.optimizers[k].step()
            for opt in state.optimizers.values():
                opt.zero_grad(set_to_none=True)
            for k, ema in state.emas.items():
                ema.update(state.module(k))
            return {"loss": loss.detach(), **stats}

        def export(state, directory: Path) -> None:
            # a frozen (contrastively aligned) encoder is saved as trained: the denoiser learnt its outputs
            saved = {k: e.model for k, e in state.emas.items()}
            if contrastive:
                saved["encoder"] = state.module("encoder")
            _save_torch({k: {"spec": m.spec, "weights": m.state_dict()} for k, m in saved.items()},
                        directory / DIFF_FILE)

        schedule = Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every)
        return fit(run, state, _random_rows(state, (h, task_index), cfg.batch_size // run.world), step, schedule,
                   export=export, progress={"diffusion loss": "loss"},
                   diverged_hint=f"lower diff_lr (now {cfg.lr})", unit="models")
    finally:
        run.close()


def load_diffusion(checkpoint_uri: str):
    """(EMA VectorDenoiser, SetEncoder or None: EMA, or as trained when frozen), eval mode."""
    from raygen.weightgen.latent import VectorDenoiser
    from raygen.weightgen.set_encoder import SetEncoder

    saved = load_checkpoint_file(checkpoint_uri, DIFF_FILE)
    denoiser = VectorDenoiser(**saved["denoiser"]["spec"])
    denoiser.load_state_dict(saved["denoiser"]["weights"])
    encoder = None
    if "encoder" in saved:
        encoder = SetEncoder(**saved["encoder"]["spec"])
        encoder.load_state_dict(saved["encoder"]["weights"])
        encoder.eval()
    return denoiser.eval(), encoder


def _train_stage(stage: StageConfig, train_func, verbose: bool) -> str:
    """Run a stage in this process or on Ray Train; returns the URI of its final checkpoint."""
    from raygen.rundir import RunDir
    from raygen.train_loop import checkpoint_name, launch

    run_dir = RunDir(stage)  # refuses a stage dir of other settings
    done = checkpoint_name(stage.steps)
    if run_dir.is_complete(done):  # its last checkpoint: finished (RunDir has already dropped the old report)
        print(f"       {stage.stage}: finished already, reusing {run_dir.child_uri(done)}")
        metrics, latest = json.loads(run_dir.read_text("metrics.jsonl").splitlines()[-1]), done
    else:
        metrics, latest = launch(train_func, stage, run_dir, num_workers=stage.num_workers,
                                 keep_checkpoints=stage.keep_checkpoints, max_failures=stage.max_failures,
                                 verbose=verbose)
    if latest is None:
        raise UserError(f"{stage.stage} training under {run_dir.uri} wrote no checkpoint; see its metrics.jsonl")
    run_dir.write_report({"stage": stage.stage, "checkpoint": run_dir.child_uri(latest), "final": metrics},
                         f"# weightgen {stage.stage} stage\n\nfinal metrics: {json.dumps(metrics)}\n")
    run_dir.close()
    return run_dir.child_uri(latest)


# ====================================================================== stage 4: generation


class GenerateActor:
    """Draws the generated ids of a chunk (per-sample seeds), decodes, evaluates and writes the part."""

    def __init__(self, config: dict, store_uri: str, ae_uri: str, diff_uri: str, task_ids: list[int]):
        import torch

        from raygen.parts import Chunks, PartStore
        from raygen.weightgen.zoo import base_from, build_classifier, zoo_splits
        from raygen.workloads.zoo import read_metadata

        torch.set_num_threads(1)
        self.cfg = WeightgenConfig.from_dict(config)
        self.task_ids = task_ids
        self.chunks = Chunks(len(task_ids) * self.cfg.n_generate, self.cfg.n_generate)
        self.store = PartStore.at(store_uri, id_column="model_id")
        self.ae, self.norm, _ = load_autoencoder(ae_uri)
        self.denoiser, self.encoder = load_diffusion(diff_uri)
        self.metadata = read_metadata(self.store)
        self.model = build_classifier(self.metadata["arch"]).eval()
        self.base = base_from(self.model, self.metadata)
        self.splits = zoo_splits(self.metadata)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from raygen.weightgen.evaluate import accuracies
        from raygen.seeds import per_item_seeds
        from raygen.weightgen.latent import sample_latents
        from raygen.weightgen.zoo import params_table, task_splits

        out = {"chunk": [], "rows": [], "seconds": []}
        for chunk in batch["chunk"].tolist():
            start = time.perf_counter()
            ids = self.chunks.ids(chunk)
            task_id = self.task_ids[chunk]  # one chunk per task
            seeds = per_item_seeds(self.cfg.seed, ids)
            cond = None
            with torch.no_grad():
                if self.encoder is not None:
                    support = task_supports(self.metadata, [task_id], self.cfg.support_shots, self.splits)
                    cond = self.encoder(support).expand(len(ids), -1)
                h = sample_latents(self.denoiser, self.denoiser.spec["dim"], seeds.tolist(), cond,
                                   data_mean=self.denoiser.data_mean, num_steps=self.cfg.sample_steps)
                thetas = self.norm.denormalize(self.ae.decode(h).double()).float()
            if not torch.isfinite(thetas).all():
                raise UserError(f"generation produced NaN/inf for task {task_id}; retrain with lower diff_lr")
            splits = task_splits(self.metadata["tasks"][str(task_id)], self.splits)
            acc = accuracies(self.model, self.norm.layout, thetas, {"val": splits["val"], "test": splits["test"]},
                             self.base)
            cols = {"model_id": ids.tolist(), "task_id": [task_id] * len(ids), "seed": seeds.tolist(),
                    "step": [0] * len(ids), "params": [thetas.numpy()], "val_acc": acc["val"].tolist(),
                    "test_acc": acc["test"].tolist()}
            self.store.write(chunk, params_table(cols), self.chunks, self.metadata)
            out["chunk"].append(chunk)
            out["rows"].append(len(ids))
            out["seconds"].append(time.perf_counter() - start)
        return {k: np.asarray(v) for k, v in out.items()}


def _manifest(store, settings: dict[str, Any]) -> None:
    previous = store.read_manifest()
    if previous is not None and previous != settings:
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        raise UserError(f"{store.uri} holds parts made with other settings ({', '.join(changed)}); "
                        "use a new name or --fresh")
    if previous is None:
        store.write_manifest(settings)


def generate(cfg: WeightgenConfig, run_dir, ae_uri: str, diff_uri: str, metadata: dict,
             task_ids: list[int]) -> dict[str, Any]:
    from raygen.parts import Chunks, PartStore
    from raygen.workloads.zoo import write_metadata, write_parts

    store = PartStore(run_dir.child("generated"), id_column="model_id")
    chunks = Chunks(len(task_ids) * cfg.n_generate, cfg.n_generate)
    _manifest(store, {"n_generate": cfg.n_generate, "tasks": task_ids, "sample_steps": cfg.sample_steps,
                      "ae": ae_uri, "diffusion": diff_uri, "seed": cfg.seed})
    pending = store.scan(chunks).pending
    write_metadata(store, metadata)
    start = time.perf_counter()
    print(f"[4/4] generating {cfg.n_generate} weight vectors for each of {len(task_ids)} task(s) "
          f"on {cfg.num_actors} workers")
    written = write_parts(run_dir, store, chunks, pending, GenerateActor,
                          {"config": cfg.to_dict(), "store_uri": store.loc.uri, "ae_uri": ae_uri,
                           "diff_uri": diff_uri, "task_ids": task_ids},
                          "generated", cfg.num_actors)
    return {"uri": store.loc.uri, "models": chunks.n, "written": written, "seconds": time.perf_counter() - start}


# ====================================================================== report


def _noise_perturbed(thetas, norm, sigma: float, seed: int):
    """Originals perturbed by N(0, sigma^2) in normalised space (p-diff's baseline)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    z = norm.normalize(thetas.double())
    return norm.denormalize(z + sigma * torch.randn(z.shape, generator=g, dtype=z.dtype)).float()


def _random_init(cfg: WeightgenConfig, layout, arch: dict, n: int):
    import torch

    from raygen.seeds import Stream, stream_seed
    from raygen.weightgen.params import flatten
    from raygen.weightgen.zoo import init_model

    return torch.stack([flatten(dict(init_model(arch, stream_seed(cfg.seed, Stream.RANDOM_INIT, i)).named_parameters()), layout)
                        for i in range(n)])


@_one_thread
def zoo_tables(cfg: WeightgenConfig, thetas, cols, gen, gcols, meta, norm) -> tuple[dict, dict]:
    """p-diff's table on the zoo tasks and the memorisation figures (per task, then pooled)."""
    from raygen.weightgen.evaluate import accuracies, accuracy_summary, memorisation
    from raygen.weightgen.params import ParamLayout, batched_predictions
    from raygen.weightgen.zoo import base_from, build_classifier, task_splits, zoo_splits

    splits = zoo_splits(meta)
    layout = ParamLayout.from_dict(meta["layout"])
    model = build_classifier(meta["arch"]).eval()
    base = base_from(model, meta)
    rows: dict[str, list] = {"original": [], "generated": [], "random": [], **{f"noise_{s}": [] for s in NOISE_SIGMAS}}
    mem: dict[str, list] = {}
    for t in sorted(set(cols["task_id"].tolist())):
        test = task_splits(meta["tasks"][str(t)], splits)["test"]
        orig, g = thetas[cols["task_id"] == t], gen[gcols["task_id"] == t]
        rows["original"].append(cols["test_acc"][cols["task_id"] == t])
        rows["generated"].append(gcols["test_acc"][gcols["task_id"] == t])
        for s in NOISE_SIGMAS:
            noisy = _noise_perturbed(orig, norm, s, cfg.seed + t)
            rows[f"noise_{s}"].append(accuracies(model, layout, noisy, {"test": test}, base)["test"])
        rand = _random_init(cfg, layout, meta["arch"], min(len(orig), 50))
        rows["random"].append(accuracies(model, layout, rand, {"test": test}, base)["test"])
        pred_o = batched_predictions(model, base, layout, orig, test[0])
        pred_g = batched_predictions(model, base, layout, g, test[0])
        if len(orig) >= 2:
            for k, v in memorisation(g, orig, pred_g, pred_o, test[1]).items():
                mem.setdefault(k, []).append(v)
    table = {k: accuracy_summary(np.concatenate(v)) for k, v in rows.items()}
    memo = {k: float(np.mean(np.concatenate(v))) for k, v in mem.items()}
    memo["raw"] = {k: np.concatenate(v) for k, v in mem.items()}
    return table, memo


@_one_thread
def heldout_tables(cfg: WeightgenConfig, thetas, cols, gen, gcols, meta) -> dict[str, Any]:
    """Zero-shot accuracy on held-out tasks and fine-tuning curves from generated / random /
    other-task init (the first `finetune_models` of each), averaged per arm."""
    from raygen.weightgen.evaluate import accuracies, finetune_curve, steps_to_fraction
    from raygen.weightgen.params import ParamLayout
    from raygen.weightgen.zoo import build_classifier, task_classes, task_splits, zoo_splits

    splits = zoo_splits(meta)
    layout = ParamLayout.from_dict(meta["layout"])
    model = build_classifier(meta["arch"]).eval()
    n = cfg.finetune_models
    zero_shot, other_zero_shot, curves = [], [], {"generated": [], "random": [], "other_task": []}
    chance = []
    rand = _random_init(cfg, layout, meta["arch"], n)
    for t in cfg.heldout_tasks:
        task = meta["tasks"][str(t)]
        sp = task_splits(task, splits)
        chance.append(1.0 / task_classes(task))
        g = gen[gcols["task_id"] == t]
        zero_shot.append(gcols["test_acc"][gcols["task_id"] == t])
        other_zero_shot.append(accuracies(model, layout, thetas, {"test": sp["test"]})["test"])
        inits = {"generated": g[:n], "random": rand, "other_task": thetas[:: max(1, len(thetas) // n)][:n]}
        for arm, vecs in inits.items():
            for i, v in enumerate(vecs):
                curves[arm].append(finetune_curve(model, layout, v, sp["train"], sp["test"],
                                                  steps=cfg.finetune_steps, every=cfg.finetune_every,
                                                  lr=cfg.finetune_lr, batch_size=cfg.member_batch, seed=cfg.seed + i))
    mean_curves = {arm: np.mean(c, 0) for arm, c in curves.items()}
    return {
        "tasks": cfg.heldout_tasks,
        "chance": float(100 * np.mean(chance)),
        "generated": {"zero_shot_mean": float(100 * np.concatenate(zero_shot).mean()),
                      "zero_shot_max": float(100 * np.concatenate(zero_shot).max())},
        "other_task_zoo": {"zero_shot_mean": float(100 * np.concatenate(other_zero_shot).mean())},
        "steps_to_90": {arm: steps_to_fraction(c, cfg.finetune_every) for arm, c in mean_curves.items()},
        "final_acc": {arm: float(100 * c[-1]) for arm, c in mean_curves.items()},
        "curves": {arm: (100 * c).tolist() for arm, c in mean_curves.items()},
        "curve_steps": list(range(0, cfg.finetune_steps + 1, cfg.finetune_every)),
    }


def _plots(run_dir, cols, gcols, memo: dict | None, held: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    zoo_tasks = np.isin(gcols["task_id"], np.unique(cols["task_id"]))
    both = 100 * np.concatenate([cols["test_acc"], gcols["test_acc"][zoo_tasks]])
    bins = np.linspace(both.min(), both.max() + 1e-9, 31)  # shared bins: the bars are comparable
    ax.hist(100 * cols["test_acc"], bins=bins, alpha=0.6, label="original")
    ax.hist(100 * gcols["test_acc"][zoo_tasks], bins=bins, alpha=0.6, label="generated")
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("models")
    ax.legend()
    run_dir.save_figure("accuracy_hist.png", fig)
    names.append("accuracy_hist.png")
    if memo:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(memo["raw"]["orig_nearest_dist"], memo["raw"]["orig_nearest_iou"], s=8, label="original vs nearest original")
        ax.scatter(memo["raw"]["gen_nearest_dist"], memo["raw"]["gen_nearest_iou"], s=8, label="generated vs nearest original")
        ax.set_xlabel("distance to nearest original (weight space)")
        ax.set_ylabel("IoU of wrongly predicted test images")
        ax.legend()
        run_dir.save_figure("memorisation.png", fig)
        names.append("memorisation.png")
    if held:
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm, c in held["curves"].items():
            ax.plot(held["curve_steps"], c, label=f"{arm} init")
        ax.axhline(held["chance"], color="gray", ls=":", label="chance")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        run_dir.save_figure("finetune.png", fig)
        names.append("finetune.png")
    return names


def _markdown(cfg: WeightgenConfig, summary: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# raygen weightgen: {cfg.name} ({cfg.mode} mode, {cfg.task_family} tasks)", "",
             f"Zoo: {summary['zoo']['members']} members ({summary['zoo']['parameters']} generated parameters each) "
             f"from {cfg.zoo_tasks} task(s) x {cfg.seeds} seed(s); generated: {cfg.n_generate} per task.", "",
             "## Zoo tasks: test accuracy (%)", "", "| models | mean | median | max | min | n |", "|---|---|---|---|---|---|"]
    for key, row in summary["table"].items():
        label = {"original": "original checkpoints", "generated": "generated", "random": "random init"}.get(
            key, f"noise-perturbed originals, sigma = {key.split('_', 1)[-1]}")
        lines.append(f"| {label} | {row['acc_mean']:.2f} | {row['acc_median']:.2f} | {row['acc_max']:.2f} | "
                     f"{row['acc_min']:.2f} | {row['n']} |")
    m = summary.get("memorisation")
    if m:
        lines += ["", "## Memorisation (means over models)", "",
                  "| pair | distance to nearest original | wrong-prediction IoU |", "|---|---|---|",
                  f"| original vs nearest other original | {m['orig_nearest_dist']:.4g} | {m['orig_nearest_iou']:.3f} |",
                  f"| generated vs nearest original | {m['gen_nearest_dist']:.4g} | {m['gen_nearest_iou']:.3f} |"]
    h = summary.get("heldout")
    if h:
        lines += ["", f"## Held-out tasks {h['tasks']}", "",
                  f"- zero-shot accuracy of generated weights: mean {h['generated']['zero_shot_mean']:.2f}%, "
                  f"max {h['generated']['zero_shot_max']:.2f}% (chance {h['chance']:.1f}%, zoo models of other "
                  f"tasks {h['other_task_zoo']['zero_shot_mean']:.2f}%)", "",
                  "| init | steps to 90% of final | final accuracy (%) |", "|---|---|---|"]
        for arm in h["steps_to_90"]:
            lines.append(f"| {arm} | {h['steps_to_90'][arm]} | {h['final_acc'][arm]:.2f} |")
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ====================================================================== the workload


def task_defs(spec: dict[str, Any], family: str, seed: int, classes_per_task: int, zoo_ids,
              heldout_ids) -> tuple[dict[int, dict], dict[int, dict]]:
    """(zoo task id -> definition, held-out task id -> definition) over the data of `spec`; a
    held-out task whose definition equals a zoo task's is an error (it would not be held out)."""
    from raygen.weightgen.zoo import define_tasks, load_source

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
    import torch

    from raygen import runtime
    from raygen.rundir import RunDir
    from raygen.workloads import zoo
    from raygen.workloads.zoo import read_zoo, zoo_layout

    if checked is None:
        preflight(config)
    runtime.init(verbose=verbose)
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
    target = zoo_layout(config, {**meta["arch"], "width": config.width, "feature_dim": config.feature_dim})
    target.check_matches(type(target).from_dict(meta["layout"]), f"zoo {zoo_uri}")
    overlap = sorted(set(config.heldout_tasks) & set(cols["task_id"].tolist()))
    if overlap:
        raise UserError(f"held-out task {overlap[0]} is in the zoo at {zoo_uri}; hold out a task the zoo lacks")
    if config.heldout_tasks:  # defined like the zoo's tasks: its data, family and seed
        _, held_tasks = task_defs(meta["source"], meta["task_family"], meta["seed"], meta["classes_per_task"],
                                  [int(t) for t in meta["tasks"]], config.heldout_tasks)
        meta["tasks"].update({str(t): d for t, d in held_tasks.items()})

    print(f"[2/4] parameter autoencoder ({config.ae_kind}, latent {config.latent_dim}, {config.ae_steps} steps)")
    ae_uri = _train_stage(stage_config(config, "ae", root, zoo_uri), train_autoencoder, verbose)
    print(f"[3/4] latent diffusion ({config.diff_steps} steps"
          + (", conditioned on a DeepSets task embedding)" if config.mode == "tasks" else ")"))
    diff_uri = _train_stage(stage_config(config, "diffusion", root, zoo_uri, ae_uri), train_diffusion, verbose)
    task_ids = sorted(set(cols["task_id"].tolist())) + list(config.heldout_tasks)
    gen_stage = generate(config, run_dir, ae_uri, diff_uri, meta, task_ids)
    gen, gcols, _ = read_zoo(gen_stage["uri"], "generated set")

    print("       evaluating: originals vs generated vs noise-perturbed vs random init"
          + (", fine-tuning on held-out tasks" if config.heldout_tasks else ""))
    _, norm, _ = load_autoencoder(ae_uri)
    on_zoo = np.isin(gcols["task_id"], cols["task_id"])
    table, memo = zoo_tables(config, thetas, cols, gen[torch.as_tensor(on_zoo)],
                             {k: v[on_zoo] for k, v in gcols.items()}, meta, norm)
    held = heldout_tables(config, thetas, cols, gen, gcols, meta) if config.heldout_tasks else None
    plots = _plots(run_dir, cols, gcols, memo, held)
    summary: dict[str, Any] = {
        "run_dir": root, "report": run_dir.child_uri("report.md"), "mode": config.mode,
        "zoo": {**zoo_stage, "members": len(thetas), "parameters": thetas.shape[1],
                "original": {k: table["original"][k] for k in ("acc_mean", "acc_median", "acc_max", "acc_min")}},
        "generated": gen_stage, "table": table,
        "memorisation": {k: v for k, v in memo.items() if k != "raw"},
        "checkpoints": {"ae": ae_uri, "diffusion": diff_uri}, "seconds": time.perf_counter() - started,
    }
    summary["zoo"]["generated"] = {k: table["generated"][k] for k in ("acc_mean", "acc_median", "acc_max", "acc_min")}
    if held is not None:
        summary["heldout"] = held
    run_dir.write_report(summary, _markdown(config, summary, plots))
    run_dir.close()
    print(f"zoo original: mean {table['original']['acc_mean']:.2f}% max {table['original']['acc_max']:.2f}%  |  "
          f"generated: mean {table['generated']['acc_mean']:.2f}% max {table['generated']['acc_max']:.2f}%")
    return summary
