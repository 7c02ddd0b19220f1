"""SADM diffusion training: its config, its step, and `train_func(config)` on `raygen.train_loop`.

One optimiser step (`sadm_step`) = denoising loss -> discriminator update(s) -> denoiser update with
L_denoise + lambda_t d (see `raygen.diffusion.sadm` for the SADM choices) -> EMA update; with
`sadm_form: gated` the term is the gated, bounded one of `raygen.diffusion.structure` and
`sadm_lambda` is its gradient ratio. `init_from: <checkpoint dir>` fine-tunes: the run starts from
that checkpoint's denoiser, EMA and Adam state (discriminator, step and random streams fresh). The rest
(checkpoint store and resume, Ray Train or a plain process, NaN stop, throughput windows, metrics,
TensorBoard and sample grids through the run directory) is the shared scaffold's.

Data: a plain process iterates the built-in digits in memory in a seeded order, so a run and its
resume are bit-for-bit reproducible; other sources, and every source under Ray Train (the worker's
shard of `TorchTrainer(datasets={"train": ...})`), are iterated from their Ray Dataset.

Checkpoints (`checkpoint_<step>/`) hold the scaffold's state (denoiser, discriminator, both
optimisers, EMA, step, per-rank RNG) and export the sampler's model: `denoiser.json` (the
constructor spec, including the sample shape (C, H, W) of the training images and their data
range) + `ema.pt` (EMA weights), read by `raygen.models.load_denoiser`.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

from raygen.config import Config, bounded, check
from raygen.data.batches import torch_batches
from raygen.diffusion.ema import EMA
from raygen.diffusion.losses import DenoisingLoss
from raygen.diffusion.sadm import StructureEncoder, adversarial_loss, discriminator_loss, lambda_at
from raygen.diffusion.structure import SpectralEncoder, gated_structure_term, js_critic_loss, structure_noise
from raygen.diffusion.sample import heun_sample
from raygen.errors import UserError
from raygen.models.denoiser import PIXEL_RANGE, build_denoiser, save_denoiser
from raygen.models.unet import SIZES
from raygen.seeds import Stream, stream_seed, torch_generator
from raygen.train_loop import STATE_FILE, Schedule, TrainRun, TrainState, _read_checkpoint, fit, seeded


@dataclasses.dataclass
class TrainSADMConfig(Config):
    # extending `steps` resumes; parallelism and cadences do not change the updates made so far
    RESUME_FREE = frozenset({"steps", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                             "num_samples", "num_workers", "use_gpu", "max_failures"})

    name: str = "train_sadm"
    data: str = "digits"  # "digits", an ImageFolder directory, or a Parquet file/directory
    image_column: str = "image"
    label_column: str = "label"
    image_size: int | None = bounded(None, ge=1)  # resize folder/Parquet images to this square size
    channels: int = bounded(1, ge=1)
    model_size: Literal["tiny", "small"] = "tiny"
    energy: bool = False  # scalar-energy model (full-covariance MMDGS); ~2-3x slower to train
    num_classes: int = bounded(0, ge=0)  # > 0: class-conditional with label dropout (classifier-free guidance)
    label_dropout: float = bounded(0.1, ge=0, lt=1)
    sigma_data: float = bounded(0.5, gt=0)
    data_mean: float = 0.5
    p_mean: float = -1.2
    p_std: float = bounded(1.2, gt=0)
    steps: int = bounded(1000, ge=1)  # optimiser updates
    batch_size: int = bounded(64, ge=1)  # global batch per micro-step, split over workers
    grad_accum: int = bounded(1, ge=1)
    lr: float = bounded(2e-4, gt=0)
    grad_clip: float = bounded(1.0, ge=0)  # 0: no clipping
    ema_decay: float = bounded(0.999, ge=0, lt=1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    sadm_lambda: float = bounded(0.0, ge=0)  # 0: plain denoising training; "gated": the gradient ratio
    # "current": cosine affinities, squared difference, mixed sigma, fixed lambda; "gated": the
    # bounded term of raygen.diffusion.structure (low-sigma gate, JS of softmax structures, adaptive lambda)
    sadm_form: Literal["current", "gated"] = "current"
    init_from: str | None = None  # a checkpoint_* directory: start from its denoiser, EMA and Adam state
    sadm_warmup: int = bounded(200, ge=0)
    disc_steps: int = bounded(1, ge=1)
    disc_lr: float = bounded(2e-4, gt=0)
    embed_dim: int = bounded(64, ge=1)
    log_every: int = bounded(20, ge=1)
    checkpoint_every: int = bounded(200, ge=1)
    keep_checkpoints: int = bounded(2, ge=1)
    sample_every: int = bounded(500, ge=0)  # 0: no sample grids
    num_samples: int = bounded(64, ge=1)
    num_workers: int = bounded(0, ge=0)  # 0: train in this process without Ray Train
    use_gpu: bool = False
    max_failures: int = bounded(1, ge=-1)  # -1: retry forever

    def validate(self) -> None:
        super().validate()
        check(self.model_size in SIZES, "model_size", f"must be one of {', '.join(SIZES)}")
        check(self.batch_size % max(self.num_workers, 1) == 0, "batch_size",
              f"must be divisible by num_workers={self.num_workers}")


@dataclasses.dataclass
class SADMStep:
    """A training step's fixed parts: devices/DDP (`accelerator`), the denoising loss, SADM's settings.

    Called as the scaffold's step function: `step(state, (x0, labels), step_index)`."""

    accelerator: Any
    loss_fn: DenoisingLoss
    sadm_lambda: float = 0.0
    sadm_warmup: int = 0
    disc_steps: int = 1
    grad_clip: float = 0.0
    sadm_form: str = "current"
    seed: int = 0  # keys the gated form's structure batches (sigma shared by all ranks, noise per rank)
    rank: int = 0

    def __call__(self, state: TrainState, batch: tuple, step: int) -> dict[str, Any]:
        x0, labels = batch
        lam = lambda_at(step, self.sadm_lambda, self.sadm_warmup)
        if self.sadm_form == "gated":
            return gated_step(self, state, x0, labels, lam, step)
        return {**sadm_step(self, state, x0, labels, lam), "lambda_t": lam}


def sadm_step(ctx: SADMStep, state: TrainState, x0: torch.Tensor, labels: torch.Tensor | None,
              lam: float) -> dict[str, torch.Tensor]:
    """One SADM micro-step on state's "denoiser" (optimiser "opt", EMA "denoiser") and discriminator
    "encoder" (optimiser "opt_phi"). The adversarial term uses the unwrapped encoder so that it stays
    out of DDP's gradient hooks; with lam = 0 it is not computed at all (plain training, exactly)."""
    accelerator = ctx.accelerator
    denoiser, encoder = state.modules["denoiser"], state.modules["encoder"]
    opt_phi = state.optimizers["opt_phi"]
    loss_denoise, x_hat = ctx.loss_fn(denoiser, x0, state.generator, labels)
    for _ in range(ctx.disc_steps):
        opt_phi.zero_grad(set_to_none=True)
        loss_disc = discriminator_loss(encoder, x0, x_hat)
        accelerator.backward(loss_disc)
        opt_phi.step()
    total = loss_denoise
    loss_adv = torch.zeros(())
    if lam > 0:
        loss_adv = adversarial_loss(state.module("encoder"), x0, x_hat)
        total = loss_denoise + lam * loss_adv
    _update_denoiser(ctx, state, total)
    return {"loss": total.detach(), "loss_denoise": loss_denoise.detach(), "loss_adv": loss_adv.detach(),
            "structure_distance": -loss_disc.detach()}


def _update_denoiser(ctx: SADMStep, state: TrainState, total: torch.Tensor) -> None:
    accelerator, opt = ctx.accelerator, state.optimizers["opt"]
    opt.zero_grad(set_to_none=True)
    accelerator.backward(total)
    if accelerator.sync_gradients and ctx.grad_clip > 0:
        accelerator.clip_grad_norm_(state.modules["denoiser"].parameters(), ctx.grad_clip)
    opt.step()
    if accelerator.sync_gradients:
        state.emas["denoiser"].update(state.module("denoiser"))


def gated_step(ctx: SADMStep, state: TrainState, x0: torch.Tensor, labels: torch.Tensor | None, ratio: float,
               step: int) -> dict[str, Any]:
    """One micro-step with the gated structure term (`raygen.diffusion.structure`): `ratio` is the
    structure / denoise gradient ratio at the output layer; 0 computes nothing (plain training, exactly).
    The structure batch's sigma and noise come from their own stream keyed by (seed, step)."""
    loss_denoise, _ = ctx.loss_fn(state.modules["denoiser"], x0, state.generator, labels)
    total, logs = loss_denoise, {"lambda_t": 0.0}
    if ratio > 0:
        encoder, opt_phi = state.modules["encoder"], state.optimizers["opt_phi"]

        def critic(x_real: torch.Tensor, x_hat: torch.Tensor) -> None:
            for _ in range(ctx.disc_steps):
                opt_phi.zero_grad(set_to_none=True)
                ctx.accelerator.backward(js_critic_loss(encoder, x_real, x_hat))
                opt_phi.step()

        sigma_data = ctx.loss_fn.sigma_data
        sigma, eps = structure_noise((ctx.seed, Stream.STRUCTURE, step), ctx.rank, x0.shape, 0.02, sigma_data, x0.dtype)
        term, logs = gated_structure_term(
            state.modules["denoiser"], state.module("encoder"), x0, labels, loss_denoise,
            state.module("denoiser").net.out.weight, sigma=sigma, eps=eps, sigma_data=sigma_data, ratio=ratio,
            critic=critic)
        total = loss_denoise + term
    _update_denoiser(ctx, state, total)
    return {"loss": total.detach(), "loss_denoise": loss_denoise.detach(), **logs}


def _digit_batches(seed: int, per_worker: int, start: int, rank: int = 0,
                   world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless in-memory digit batches in a seeded order per epoch, resumed exactly at batch `start`.

    Every rank draws the same permutation and takes its own `per_worker` rows of each global batch,
    so the ranks see disjoint rows, and the global batch is the plain run's for any worker count.
    The 1,797 digits live in each worker's memory: streaming them through Ray Data would only add a
    coordinator and a data wait to every step (`benchmarks/train_throughput.py`)."""
    from raygen.data import digits_arrays

    images, labels = (torch.from_numpy(a) for a in digits_arrays())
    per_global = per_worker * world
    per_epoch = len(images) // per_global
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = torch.randperm(len(images), generator=torch_generator(seed, Stream.DATA_ORDER, epoch))
        for b in range(offset, per_epoch):
            idx = order[b * per_global + rank * per_worker:b * per_global + (rank + 1) * per_worker]
            yield images[idx], labels[idx]
        epoch, offset = epoch + 1, 0


def _dataset_batches(cfg: TrainSADMConfig, source, rank: int, per_worker: int) -> Iterator[tuple]:
    """Endless batches from a Ray Dataset or a Ray Train shard, reshuffled locally per epoch."""
    epoch = 0
    while True:
        n = 0
        # large fetches sliced into steps, prefetched while the step runs (raygen.data.batches)
        for batch in torch_batches(source, per_worker, ("image", "label"), prefetch_batches=2,
                                   local_shuffle_buffer_size=max(4 * per_worker, 1024),
                                   local_shuffle_seed=stream_seed(cfg.seed, Stream.SHARD_SHUFFLE, rank, epoch)):
            n += 1
            yield batch
        if n == 0:
            raise UserError(f"data source {cfg.data!r} has fewer than {per_worker} images per worker; "
                            "lower batch_size or num_workers")
        epoch += 1


def _batches(cfg: TrainSADMConfig, run: TrainRun, start: int) -> Iterator[tuple]:
    per_worker = cfg.batch_size // run.world
    if cfg.data == "digits":
        return _digit_batches(cfg.seed, per_worker, start, run.rank, run.world)
    shard = run.store.shard("train")
    if shard is None:
        from raygen.data import load_dataset

        shard = load_dataset(cfg.data, image_column=cfg.image_column, label_column=cfg.label_column,
                             image_size=cfg.image_size, channels=cfg.channels)
    return _dataset_batches(cfg, shard, run.rank, per_worker)


def _export(state: TrainState, directory: Path) -> None:
    """What makes a checkpoint a sampler model: the EMA denoiser's spec and weights."""
    model = state.emas["denoiser"].model
    save_denoiser(model, model.state_dict(), directory)


def _sample_grid(cfg: TrainSADMConfig):
    def draw(state: TrainState, batch: tuple) -> torch.Tensor:
        model = state.emas["denoiser"].model
        labels = torch.arange(cfg.num_samples) % cfg.num_classes if cfg.num_classes else None
        x = heun_sample(model, (cfg.num_samples, *model.sample_shape), torch_generator(cfg.seed, Stream.SAMPLE_GRID),
                        labels=labels, data_mean=cfg.data_mean, device=batch[0].device)
        return x.clamp(*model.data_range)

    return draw


def init_from(state: TrainState, checkpoint: str) -> None:
    """Fine-tuning start: the checkpoint's denoiser weights, EMA and Adam state; the discriminator,
    the step count (so `steps` counts fine-tuning steps and the warm-up restarts) and the random
    streams start fresh."""
    directory = Path(checkpoint)
    if not (directory / STATE_FILE).exists():
        raise UserError(f"init_from {checkpoint!r} is not a raygen training checkpoint (no {STATE_FILE}); "
                        "pass a checkpoint_* directory of a `raygen train` run")
    # not this run's own checkpoint: deleting it would not help, another one would
    saved = _read_checkpoint(directory, 0, fix="pass an undamaged checkpoint_* directory as init_from")
    try:
        state.module("denoiser").load_state_dict(saved["modules"]["denoiser"])
        state.emas["denoiser"].load_state_dict(saved["emas"]["denoiser"])
        state.optimizers["opt"].load_state_dict(saved["optimizers"]["opt"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"init_from {checkpoint!r} does not fit this model ({type(exc).__name__}); "
                        "use the model_size, channels, num_classes and energy it was trained with") from None


def train_func(config: dict) -> dict:
    """Train a SADM denoiser; returns the last logged metrics (rank 0's under Ray Train)."""
    cfg = TrainSADMConfig.from_dict(config)
    run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints, use_gpu=cfg.use_gpu,
                   mixed_precision=cfg.mixed_precision, grad_accum=cfg.grad_accum)
    try:
        if cfg.batch_size % run.world:
            raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {run.world} workers")
        restored = run.store.load(run.rank)
        start = restored["step"] if restored is not None else 0
        batches = _batches(cfg, run, start * cfg.grad_accum)
        # the first batch fixes the sample shape the checkpoints record (folders may be resized)
        first = next(batches)
        sample_shape = tuple(first[0].shape[1:])
        if sample_shape[0] != cfg.channels:
            raise UserError(f"data {cfg.data!r} have {sample_shape[0]} channels but channels={cfg.channels}; "
                            f"set channels: {sample_shape[0]}")
        denoiser = seeded(stream_seed(cfg.seed, Stream.MODEL_INIT), lambda: build_denoiser(
            cfg.model_size, cfg.channels, cfg.num_classes, cfg.energy, cfg.sigma_data, cfg.data_mean,
            sample_shape=sample_shape, data_range=PIXEL_RANGE))  # raygen.data yields [0, 1]
        critic = SpectralEncoder if cfg.sadm_form == "gated" else StructureEncoder
        encoder = seeded(stream_seed(cfg.seed, Stream.CRITIC_INIT), lambda: critic(cfg.channels, embed_dim=cfg.embed_dim))
        state = TrainState(
            modules={"denoiser": denoiser, "encoder": encoder},
            optimizers={"opt": torch.optim.Adam(denoiser.parameters(), lr=cfg.lr),
                        "opt_phi": torch.optim.Adam(encoder.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))},
            emas={"denoiser": EMA(denoiser, cfg.ema_decay)},
            generator=torch_generator(cfg.seed, Stream.INIT, run.rank),
        )
        if restored is not None:
            state.load_state_dict(restored)  # before prepare(): plain modules/optimisers load their own dicts
        elif cfg.init_from:
            init_from(state, cfg.init_from)
        run.prepare(state)
        step = SADMStep(run.accelerator, DenoisingLoss(cfg.sigma_data, cfg.p_mean, cfg.p_std, cfg.num_classes,
                                                       cfg.label_dropout),
                        cfg.sadm_lambda, cfg.sadm_warmup, cfg.disc_steps, cfg.grad_clip, cfg.sadm_form, cfg.seed,
                        run.rank)
        schedule = Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every, cfg.sample_every, cfg.grad_accum)
        return fit(run, state, itertools.chain([first], batches), step, schedule, export=_export,
                   images=_sample_grid(cfg),
                   progress={"loss": "loss", "denoise": "loss_denoise",
                             **({"lambda": "lambda_t"} if cfg.sadm_form == "gated" else {"structure": "structure_distance"})},
                   diverged_hint=f"lower lr (now {cfg.lr}) or grad_clip")
    finally:
        run.close()
