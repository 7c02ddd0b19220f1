"""The diffusion-training loop: `train_func(config)`, plain or inside Ray Train's TorchTrainer.

One optimiser step (`sadm_step`) = denoising loss -> discriminator update(s) -> denoiser update with
L_denoise + lambda_t d (see `raygen.diffusion.sadm` for the SADM choices) -> EMA update.

Where it runs:
- Plain call (no Ray Train context): one process; the built-in digits are iterated in memory in a
  seeded order, so a run and its resume are bit-for-bit reproducible; other sources are iterated
  from their Ray Dataset. Checkpoints go to `<storage_path>/<name>/checkpoint_<step>/`.
- Inside TorchTrainer: data come from `ray.train.get_dataset_shard("train")`; every rank writes its
  RNG state and rank 0 the rest into a temp dir handed to `ray.train.report`, which merges and
  persists them; resume reads `ray.train.get_checkpoint()`.
Accelerate handles devices, DDP, mixed precision (bf16 on GPU, fp32 on CPU) and gradient
accumulation; Ray's own prepare helpers are deliberately not used (they would wrap twice).

Rank 0 writes `metrics.jsonl`, TensorBoard scalars (`tb/`) and sample grids (`samples/`) straight
into the run directory, which must therefore be a (shared) filesystem path. On resume, lines and
events logged after the restored checkpoint are dropped, so the loss curve continues the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from raygen.config import Config, check
from raygen.diffusion.ema import EMA
from raygen.diffusion.losses import DenoisingLoss
from raygen.diffusion.sadm import StructureEncoder, adversarial_loss, discriminator_loss, lambda_at
from raygen.diffusion.sample import heun_sample
from raygen.errors import UserError
from raygen.models.denoiser import build_denoiser, save_denoiser
from raygen.models.unet import SIZES


@dataclasses.dataclass
class TrainSADMConfig(Config):
    name: str = "train_sadm"
    data: str = "digits"  # "digits", an ImageFolder directory, or a Parquet file/directory
    image_column: str = "image"
    label_column: str = "label"
    image_size: int | None = None  # resize folder/Parquet images to this square size
    channels: int = 1
    model_size: Literal["tiny", "small"] = "tiny"
    energy: bool = False  # scalar-energy model (full-covariance MMDGS); ~2-3x slower to train
    num_classes: int = 0  # > 0: class-conditional with label dropout (classifier-free guidance)
    label_dropout: float = 0.1
    sigma_data: float = 0.5
    data_mean: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    steps: int = 1000  # optimiser updates
    batch_size: int = 64  # global batch per micro-step, split over workers
    grad_accum: int = 1
    lr: float = 2e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    sadm_lambda: float = 0.1
    sadm_warmup: int = 200
    disc_steps: int = 1
    disc_lr: float = 2e-4
    embed_dim: int = 64
    log_every: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 500  # 0: no sample grids
    num_samples: int = 64
    num_workers: int = 0  # 0: train in this process without Ray Train
    use_gpu: bool = False
    max_failures: int = 1

    def validate(self) -> None:
        super().validate()
        for key in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints",
                    "channels", "disc_steps", "embed_dim", "num_samples"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("lr", "disc_lr", "sigma_data", "p_std"):
            check(getattr(self, key) > 0, key, "must be > 0")
        check(self.model_size in SIZES, "model_size", f"must be one of {', '.join(SIZES)}")
        check(self.sadm_lambda >= 0, "sadm_lambda", "must be >= 0 (0 = plain denoising training)")
        check(self.sadm_warmup >= 0 and self.sample_every >= 0 and self.num_workers >= 0, "sadm_warmup",
              "sadm_warmup, sample_every and num_workers must be >= 0")
        check(0 <= self.label_dropout < 1, "label_dropout", "must be in [0, 1)")
        check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        check(self.num_classes >= 0, "num_classes", "must be >= 0 (0 = unconditional)")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
        check(self.max_failures >= -1, "max_failures", "must be >= -1 (-1 = retry forever)")
        check(self.batch_size % max(self.num_workers, 1) == 0, "batch_size",
              f"must be divisible by num_workers={self.num_workers}")


def _seeded(seed: int, build):
    """Build modules with a fixed seed without touching the caller's global RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def stream_seed(*key: int) -> int:
    """A 63-bit seed for an independent stream keyed by integers (seed, rank, stream...)."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sadm_step(accelerator, denoiser, encoder, opt, opt_phi, ema, loss_fn, x0, labels, generator, lam, disc_steps,
              grad_clip) -> dict[str, torch.Tensor]:
    """One SADM micro-step. `encoder` is the (possibly DDP-wrapped) discriminator; the adversarial
    term uses the unwrapped module so that it stays out of DDP's gradient hooks."""
    loss_denoise, x_hat = loss_fn(denoiser, x0, generator, labels)
    for _ in range(disc_steps):
        opt_phi.zero_grad(set_to_none=True)
        loss_disc = discriminator_loss(encoder, x0, x_hat)
        accelerator.backward(loss_disc)
        opt_phi.step()
    total = loss_denoise
    loss_adv = torch.zeros(())
    if lam > 0:  # lambda = 0 adds nothing at all, so plain training is reproduced exactly
        loss_adv = adversarial_loss(accelerator.unwrap_model(encoder), x0, x_hat)
        total = loss_denoise + lam * loss_adv
    opt.zero_grad(set_to_none=True)
    accelerator.backward(total)
    if accelerator.sync_gradients:
        if grad_clip > 0:
            accelerator.clip_grad_norm_(denoiser.parameters(), grad_clip)
    opt.step()
    if accelerator.sync_gradients:
        ema.update(accelerator.unwrap_model(denoiser))
    return {"loss": total.detach(), "loss_denoise": loss_denoise.detach(), "loss_adv": loss_adv.detach(),
            "structure_distance": -loss_disc.detach()}


def _ray_train_active() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except (ImportError, RuntimeError):
        return False


def _batches(cfg: TrainSADMConfig, in_ray: bool, rank: int, per_worker: int, start: int) -> Iterator:
    """Endless (images, labels) batches. In-memory digits resume exactly at batch `start`."""
    if not in_ray and cfg.data == "digits":
        from raygen.data import digits_arrays

        images, labels = (torch.from_numpy(a) for a in digits_arrays())
        per_epoch = len(images) // per_worker
        epoch, offset = divmod(start, per_epoch)
        while True:
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(stream_seed(cfg.seed, 1, epoch)))
            for b in range(offset, per_epoch):
                idx = order[b * per_worker:(b + 1) * per_worker]
                yield images[idx], labels[idx]
            epoch, offset = epoch + 1, 0
    if in_ray:
        import ray.train

        source = ray.train.get_dataset_shard("train")
    else:
        from raygen.data import load_dataset

        source = load_dataset(cfg.data, image_column=cfg.image_column, label_column=cfg.label_column,
                              image_size=cfg.image_size, channels=cfg.channels)
    epoch = 0
    while True:
        n = 0
        # prefetching keeps the next batches ready while the step runs (data wait < 5% of step time)
        for batch in source.iter_torch_batches(batch_size=per_worker, drop_last=True, prefetch_batches=4,
                                               local_shuffle_buffer_size=4 * per_worker,
                                               local_shuffle_seed=stream_seed(cfg.seed, 2, rank, epoch)):
            n += 1
            yield batch["image"], batch["label"]
        if n == 0:
            raise UserError(f"data source {cfg.data!r} has fewer than {per_worker} images per worker; "
                            "lower batch_size or num_workers")
        epoch += 1


class _Log:
    """Rank 0's metrics.jsonl + TensorBoard writer, truncated back to the resume step."""

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
        self.samples = run_dir / "samples"

    def scalars(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def grid(self, step: int, images: torch.Tensor) -> Path:
        from PIL import Image

        grid = image_grid(images)
        self.tb.add_image("samples", grid, step)
        self.samples.mkdir(exist_ok=True)
        path = self.samples / f"step_{step:06d}.png"
        array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
        # 8x8 digits are unreadable at 1:1; nearest-neighbour upscaling keeps the pixels exact
        image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(path)
        return path


def image_grid(images: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> one [C, rows*(H+pad)+pad, cols*(W+pad)+pad] image."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i, im in enumerate(images.clamp(0, 1).float().cpu()):
        r, q = divmod(i, cols)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = im
    return grid


def _latest_local_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in run_dir.glob("checkpoint_*") if (p / "state.pt").exists())
    return done[-1] if done else None


def train_func(config: dict) -> dict:
    """Train a SADM denoiser; returns the last logged metrics (rank 0's under Ray Train)."""
    from accelerate import Accelerator

    cfg = TrainSADMConfig.from_dict(config)
    in_ray = _ray_train_active()
    gpu = cfg.use_gpu and torch.cuda.is_available()
    precision = ("bf16" if gpu else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum, cpu=not gpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {world} workers")
    run_dir = Path(cfg.run_dir).expanduser().absolute()

    denoiser = _seeded(cfg.seed, lambda: build_denoiser(cfg.model_size, cfg.channels, cfg.num_classes, cfg.energy,
                                                        cfg.sigma_data, cfg.data_mean))
    encoder = _seeded(cfg.seed + 1, lambda: StructureEncoder(cfg.channels, embed_dim=cfg.embed_dim))
    ema = EMA(denoiser, cfg.ema_decay)
    opt = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    opt_phi = torch.optim.Adam(encoder.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(stream_seed(cfg.seed, 0, rank))
    loss_fn = DenoisingLoss(cfg.sigma_data, cfg.p_mean, cfg.p_std, cfg.num_classes, cfg.label_dropout)

    # restore before prepare(): plain modules/optimisers load their own state dicts
    start_step, resumed_from = 0, None
    if in_ray:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        ckpt_ctx = checkpoint.as_directory() if checkpoint is not None else None
    else:
        latest = _latest_local_checkpoint(run_dir)
        ckpt_ctx = contextlib.nullcontext(latest) if latest is not None else None
    if ckpt_ctx is not None:
        with ckpt_ctx as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
            denoiser.load_state_dict(state["denoiser"])
            encoder.load_state_dict(state["encoder"])
            opt.load_state_dict(state["opt"])
            opt_phi.load_state_dict(state["opt_phi"])
            ema.load_state_dict({**state["ema"], "model": torch.load(Path(d) / "ema.pt", weights_only=True)})
            rng_file = Path(d) / f"rng_rank{rank}.pt"
            if rng_file.exists():  # a resume with more workers gives the new ranks fresh streams
                generator.set_state(torch.load(rng_file, weights_only=True))
            start_step = resumed_from = state["step"]

    denoiser, encoder, opt, opt_phi = accelerator.prepare(denoiser, encoder, opt, opt_phi)
    log = _Log(run_dir, start_step) if rank == 0 else None
    batches = _batches(cfg, in_ray, rank, cfg.batch_size // world, start_step * cfg.grad_accum)
    last: dict = {}
    window_start, data_wait, window_images = time.perf_counter(), 0.0, 0

    for step in range(start_step, cfg.steps):
        lam = lambda_at(step, cfg.sadm_lambda, cfg.sadm_warmup)
        for _ in range(cfg.grad_accum):
            t0 = time.perf_counter()
            x0, labels = next(batches)
            data_wait += time.perf_counter() - t0
            x0, labels = x0.to(accelerator.device), labels.to(accelerator.device)
            window_images += x0.shape[0] * world
            with accelerator.accumulate(denoiser, encoder):
                stats = sadm_step(accelerator, denoiser, encoder, opt, opt_phi, ema, loss_fn, x0, labels, generator,
                                  lam, cfg.disc_steps, cfg.grad_clip)
            # the mean over ranks: every rank sees the same value, so all stop together on NaN
            loss = accelerator.reduce(stats["loss"].to(accelerator.device), "mean").item()
            if not math.isfinite(loss):
                raise UserError(
                    f"training diverged: loss is {loss} at step {step + 1}; lower lr (now {cfg.lr}) or grad_clip. "
                    f"The last good checkpoint (step {_last_saved(step, start_step, cfg)}) is kept in {run_dir}")
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = time.perf_counter() - window_start
            last = {k: accelerator.reduce(v.to(accelerator.device), "mean").item() for k, v in stats.items()}
            last.update(lambda_t=lam, lr=opt.param_groups[0]["lr"], images_per_s=window_images / elapsed,
                        data_wait_frac=data_wait / elapsed)
            window_start, data_wait, window_images = time.perf_counter(), 0.0, 0
            if log is not None:
                log.scalars(done, last)
                print(f"step {done}/{cfg.steps}  loss {last['loss']:.4f}  denoise {last['loss_denoise']:.4f}  "
                      f"structure {last['structure_distance']:.4f}  {last['images_per_s']:.0f} img/s", flush=True)
        if log is not None and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
            shape = (cfg.num_samples, *x0.shape[1:])
            grid_labels = torch.arange(cfg.num_samples) % cfg.num_classes if cfg.num_classes else None
            log.grid(done, heun_sample(ema.model, shape, torch.Generator().manual_seed(cfg.seed), labels=grid_labels,
                                       data_mean=cfg.data_mean, device=accelerator.device))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save_checkpoint(cfg, in_ray, rank, run_dir, done, resumed_from, last, accelerator, denoiser, encoder,
                             opt, opt_phi, ema, generator)
    if log is not None:
        log.tb.close()
    return {**last, "step": cfg.steps, "resumed_from": resumed_from}


def _last_saved(step: int, start_step: int, cfg: TrainSADMConfig) -> int | None:
    saved = (step // cfg.checkpoint_every) * cfg.checkpoint_every
    return saved if saved > 0 else (start_step or None)


def _save_checkpoint(cfg, in_ray, rank, run_dir, step, resumed_from, metrics, accelerator, denoiser, encoder, opt,
                     opt_phi, ema, generator) -> None:
    name = f"checkpoint_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"raygen-{name}-", dir=None if in_ray else run_dir))
    torch.save(generator.get_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        save_denoiser(ema.model, ema.model.state_dict(), tmp)
        torch.save({"denoiser": accelerator.unwrap_model(denoiser).state_dict(),
                    "encoder": accelerator.unwrap_model(encoder).state_dict(),
                    "opt": opt.state_dict(), "opt_phi": opt_phi.state_dict(),
                    "ema": {"num_updates": ema.num_updates, "decay": ema.decay}, "step": step}, tmp / "state.pt")
    if in_ray:
        import ray.train

        ray.train.report({**metrics, "step": step, "resumed_from": resumed_from},
                         checkpoint=ray.train.Checkpoint.from_directory(str(tmp)), checkpoint_dir_name=name)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    final = run_dir / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # state.pt appears atomically with the rest: a half-written checkpoint is never resumed
    for old in sorted(run_dir.glob("checkpoint_*"))[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
