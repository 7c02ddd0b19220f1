"""Weight generation's trainers on the shared scaffold (`raygen.train_loop`), like `diffusion/train.py`.

- `train_autoencoder(config)`: p-diff's parameter autoencoder on the normalised zoo;
- `train_diffusion(config)`: latent EDM diffusion over the AE's latents (in tasks mode conditioned
  on a set encoder's embedding of each member's task support set).

Each is a plain `train_func(config)` (a `StageConfig` as a dict) that runs in this process or on
Ray Train workers (`raygen.train_loop.launch`); the checkpoints they export hold only tensors,
numbers, strings and lists (the module specs, the normalisation, the zoo's metadata), so `load_*`
reads them with `torch.load(weights_only=True)`: a run directory handed over in a shared bucket
cannot run code when it is resumed or sampled from.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from raygen import storage
from raygen.config import Config, check
from raygen.diffusion.ema import EMA
from raygen.diffusion.losses import DenoisingLoss
from raygen.errors import UserError
from raygen.storage import first_line
from raygen.seeds import Stream, stream_seed, torch_generator
from raygen.threads import one_thread
from raygen.train_loop import Schedule, TrainRun, TrainState, fit, seeded
from raygen.weightgen.autoencoder import ParamAutoencoder
from raygen.weightgen.latent import LatentScale, VectorDenoiser, latent_loss
from raygen.weightgen.normalize import NORMS, norm_from_dict
from raygen.models.params import ParamLayout
from raygen.weightgen.set_encoder import ContrastiveHeads, SetEncoder, contrastive_loss
from raygen.weightgen.store import read_zoo
from raygen.weightgen.zoo import support_set, task_classes, task_splits, zoo_splits

AE_FILE, DIFF_FILE = "autoencoder.pt", "diffusion.pt"


@dataclasses.dataclass
class StageConfig(Config):
    """One training stage (`ae` or `diffusion`) of a weightgen run; built from the run's config."""
    stage: Literal["ae", "diffusion"] = "ae"
    zoo: str = ""  # URI of the zoo parts
    autoencoder: str = ""  # diffusion: URI of the AE checkpoint directory
    mode: Literal["trajectory", "tasks"] = "trajectory"
    support_shots: int = 5
    support_draw: Literal["fixed", "random"] = "fixed"
    ae_kind: Literal["mlp", "conv"] = "mlp"
    normalize: Literal["weight", "tensor"] = "weight"
    latent_dim: int = 32
    hidden: int = 256
    depth: int = 3
    cond_dim: int = 64
    set_encoder: Literal["deepsets", "set_transformer"] = "deepsets"
    encoder_training: Literal["joint", "contrastive"] = "joint"
    contrastive_steps: int = 1000
    input_noise: float = 0.001
    latent_noise: float = 0.1
    # diffusion: noise levels per latent dimension (its std over the zoo) or from one scalar std; the
    # default is the old behaviour so a stage directory made before the key is refused, not resumed
    latent_scale: Literal["dim", "scalar"] = "scalar"
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 64
    ema_decay: float = 0.999
    log_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_workers: int = 0
    max_failures: int = 1
    use_gpu: bool = False  # one GPU per Ray Train worker
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # Accelerate's (`raygen.train_loop.TrainRun`)

    def validate(self) -> None:
        super().validate()
        check(bool(self.zoo), "zoo", "must name the zoo's parts directory")
        check(self.batch_size % max(self.num_workers, 1) == 0, "batch_size",
              f"must be divisible by num_workers={self.num_workers}")


def _random_rows(state, tensors: tuple, batch_size: int):
    """Endless batches of random rows drawn from the state's generator (restored on resume)."""
    while True:
        idx = torch.randint(len(tensors[0]), (batch_size,), generator=state.generator)
        yield tuple(t[idx] for t in tensors)


def _fit(cfg: StageConfig, run, state, tensors: tuple, step, export, stage: str) -> dict:
    """The scaffold's loop over random rows of `tensors`, its lines labelled by the stage."""
    schedule = Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every)
    lr_key = "ae_lr" if stage == "ae" else "diff_lr"  # the run config's key a user would change
    return fit(run, state, _random_rows(state, tensors, cfg.batch_size // run.world), step, schedule, export=export,
               progress={f"{stage} loss": "loss"}, diverged_hint=f"lower {lr_key} (now {cfg.lr})", unit="models")


def load_checkpoint_file(checkpoint_uri: str, filename: str) -> dict[str, Any]:
    """A stage's exported file, unpickled without running code (tensors and plain containers only)."""
    where = storage.resolve(checkpoint_uri).child(filename)
    try:
        # a GPU-trained stage saved CUDA tensors; its readers (generation, the report) may have no GPU
        return torch.load(io.BytesIO(storage.read_bytes(where)), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        raise UserError(f"{storage.display(where.uri)} is not a checkpoint raygen wrote ({first_line(exc)}); "
                        "delete that stage's directory (or use --fresh) to retrain it") from None


@one_thread
def train_autoencoder(config: dict) -> dict:
    """p-diff's parameter autoencoder on the normalised zoo (a Ray Train `train_func`)."""
    cfg = StageConfig.from_dict(config)
    thetas, _, meta = read_zoo(cfg.zoo)
    layout = ParamLayout.from_dict(meta["layout"])
    norm = NORMS[cfg.normalize].fit(thetas, layout)
    x = norm.normalize(thetas.double()).float()
    run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints, use_gpu=cfg.use_gpu, mixed_precision=cfg.mixed_precision)
    try:
        restored = run.store.load(run.rank)
        ae = seeded(stream_seed(cfg.seed, Stream.MODEL_INIT), lambda: ParamAutoencoder(layout.numel, cfg.latent_dim, cfg.ae_kind, cfg.hidden,
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
            torch.save({"spec": module.spec, "weights": module.state_dict(), "norm": norm.to_dict(),
                         "meta": meta}, directory / AE_FILE)

        return _fit(cfg, run, state, (x,), step, export, "ae")
    finally:
        run.close()


def load_autoencoder(checkpoint_uri: str):
    """(autoencoder in eval mode, its normalisation, zoo metadata) from an `ae` checkpoint."""
    saved = load_checkpoint_file(checkpoint_uri, AE_FILE)
    ae = ParamAutoencoder(**saved["spec"])
    ae.load_state_dict(saved["weights"])
    return ae.eval(), norm_from_dict(saved["norm"]), saved["meta"]


class TaskSupports:
    """Support sets [T, C, shots, F] of a zoo's tasks, from their training images in label order:
    the first `shots` per class, or drawn anew from a generator per call (`draw`)."""

    def __init__(self, meta: dict, task_ids: list[int], shots: int, splits: dict | None = None):
        splits = splits or zoo_splits(meta)
        self.shots = shots
        self.pools = [(*task_splits(meta["tasks"][str(t)], splits)["train"], task_classes(meta["tasks"][str(t)]))
                      for t in task_ids]

    def draw(self, index: list[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """The support sets of tasks `index` (positions in task_ids); re-drawn when given a generator."""
        return torch.stack([support_set(x, y, c, self.shots, generator) for x, y, c in (self.pools[i] for i in index)])


def encode_zoo(ae, norm, thetas):

    with torch.no_grad():
        return ae.encode(norm.normalize(thetas.double()).float())


@one_thread
def train_diffusion(config: dict) -> dict:
    """Latent EDM diffusion over the AE's latents of the zoo (a Ray Train `train_func`); in tasks mode
    conditioned on the set-encoder embedding of each member's task support set, the encoder either
    trained jointly by the denoising loss or (`encoder_training: contrastive`, D2NWG) aligned to the
    AE latents by the contrastive loss for the first `contrastive_steps` and frozen afterwards.

    Every step runs every module and zero-weights the unused loss, so Ray Train's DDP sees all
    parameters used; a phase's frozen modules get zero gradients and their optimiser is not stepped."""
    cfg = StageConfig.from_dict(config)
    ae, norm, meta = load_autoencoder(cfg.autoencoder)
    thetas, cols, zoo_meta = read_zoo(cfg.zoo)
    norm.layout.check_matches(type(norm.layout).from_dict(zoo_meta["layout"]), f"zoo {cfg.zoo}")
    h = encode_zoo(ae, norm, thetas)
    conditional = cfg.mode == "tasks"
    task_ids = sorted(set(cols["task_id"].tolist()))
    task_index = torch.as_tensor(np.searchsorted(task_ids, cols["task_id"]))
    supports = TaskSupports(zoo_meta, task_ids, cfg.support_shots) if conditional else None
    fixed = supports.draw(list(range(len(task_ids)))) if conditional else None
    if cfg.latent_scale == "dim":  # the diffusion runs on standardised latents (see latent.py)
        scale = LatentScale.fit(h)
        h, sd, mu = scale.whiten(h), 1.0, 0.0
        spec = dict(latent_mean=scale.mean.tolist(), latent_std=scale.std.tolist())
    else:
        mu, sd, spec = float(h.mean()), float(h.std()), {}
    run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints, use_gpu=cfg.use_gpu, mixed_precision=cfg.mixed_precision)
    try:
        restored = run.store.load(run.rank)
        denoiser = seeded(stream_seed(cfg.seed, Stream.MODEL_INIT), lambda: VectorDenoiser(h.shape[1], cfg.cond_dim if conditional else 0,
                                                           cfg.hidden, cfg.depth, sigma_data=sd, data_mean=mu, **spec))
        modules = {"denoiser": denoiser}
        optimizers = {"denoiser": torch.optim.AdamW(denoiser.parameters(), lr=cfg.lr)}
        contrastive = conditional and cfg.encoder_training == "contrastive"
        if conditional:
            modules["encoder"] = seeded(stream_seed(cfg.seed, Stream.ENCODER_INIT), lambda: SetEncoder(fixed.shape[-1], fixed.shape[1],
                                                                         cond_dim=cfg.cond_dim, kind=cfg.set_encoder))
            if contrastive:
                modules["align"] = seeded(stream_seed(cfg.seed, Stream.ALIGN_INIT), lambda: ContrastiveHeads(cfg.cond_dim, h.shape[1]))
            optimizers["encoder"] = torch.optim.AdamW([p for k in ("encoder", "align") if k in modules
                                                       for p in modules[k].parameters()], lr=cfg.lr)
        state = TrainState(modules=modules, optimizers=optimizers,
                           emas={k: EMA(modules[k], cfg.ema_decay) for k in ("denoiser", "encoder") if k in modules},
                           generator=torch_generator(cfg.seed, Stream.LATENT_INIT, run.rank))
        if restored is not None:
            state.load_state_dict(restored)
        run.prepare(state)
        loss_fn = DenoisingLoss.at_scale(sd)  # EDM's noise levels relative to the (standardised) latents' std

        def step(state, batch, step_index):
            h0, t = batch
            cond, stats = None, {}
            if conditional:  # each task's support set encoded once per batch
                u, inverse = t.cpu().unique(return_inverse=True)
                # a step's re-drawn sets come from their own (step, rank) stream: a resumed run draws the same
                support = fixed[u] if cfg.support_draw == "fixed" else supports.draw(
                    u.tolist(), torch_generator(cfg.seed, Stream.SUPPORT_DRAW, 0, step_index, run.rank))
                cond = state.modules["encoder"](support.to(h0.device))[inverse.to(h0.device)]
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
            torch.save({k: {"spec": m.spec, "weights": m.state_dict()} for k, m in saved.items()},
                        directory / DIFF_FILE)

        return _fit(cfg, run, state, (h, task_index), step, export, "diffusion")
    finally:
        run.close()


def load_diffusion(checkpoint_uri: str):
    """(EMA VectorDenoiser, SetEncoder or None: EMA, or as trained when frozen), eval mode."""
    saved = load_checkpoint_file(checkpoint_uri, DIFF_FILE)
    denoiser = VectorDenoiser(**saved["denoiser"]["spec"])
    denoiser.load_state_dict(saved["denoiser"]["weights"])
    encoder = None
    if "encoder" in saved:
        encoder = SetEncoder(**saved["encoder"]["spec"])
        encoder.load_state_dict(saved["encoder"]["weights"])
        encoder.eval()
    return denoiser.eval(), encoder


