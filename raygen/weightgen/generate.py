"""Generation: weight vectors drawn from the latent diffusion, decoded, evaluated, as part rows.

`Generator` is a chunk worker (`raygen.fanout`): one chunk is one task's `n_generate` vectors; vector
i is drawn from its own seed (`raygen.seeds.per_item_seeds`) and, with `support_draw: random`,
conditioned on its own support set (stream SUPPORT_DRAW, index (1, i)), so a part does not depend
on which worker drew it or how many ran. A worker computes on the GPU Ray assigned it
(`gpus_per_member`, `raygen.device`); the noise and support sets are still drawn on the CPU and
moved, and the vectors are denormalised in float64 on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from raygen.device import device_for
from raygen.errors import UserError
from raygen.parts import Chunks
from raygen.seeds import Stream, per_item_seeds, torch_generator
from raygen.threads import use_one_thread
from raygen.weightgen.evaluate import accuracies
from raygen.weightgen.latent import sample_latents
from raygen.weightgen.store import params_table
from raygen.weightgen.train import TaskSupports, load_autoencoder, load_diffusion
from raygen.weightgen.zoo import base_from, build_classifier, task_splits, zoo_splits


class Generator:
    """Draws a task's generated vectors (chunk c = task `task_ids[c]`) and evaluates them."""

    def __init__(self, *, metadata: dict[str, Any], ae_uri: str, diff_uri: str, task_ids: list[int], seed: int,
                 n_generate: int, support_shots: int, sample_steps: int, support_draw: str = "fixed",
                 gpus: float = 0.0):
        use_one_thread()
        self.metadata, self.task_ids, self.seed = metadata, task_ids, seed
        self.sample_steps, self.redraw = sample_steps, support_draw == "random"
        self.chunks = Chunks(len(task_ids) * n_generate, n_generate)
        self.device = device_for("gpus_per_member", gpus)
        ae, self.norm, _ = load_autoencoder(ae_uri)
        self.ae = ae.to(self.device)
        denoiser, encoder = load_diffusion(diff_uri)
        self.denoiser = denoiser.to(self.device)
        self.encoder = encoder.to(self.device) if encoder is not None else None
        self.model = build_classifier(metadata["arch"]).eval().to(self.device)
        self.base = {k: v.to(self.device) for k, v in base_from(self.model, metadata).items()}
        self.splits = zoo_splits(metadata)
        self.supports = TaskSupports(metadata, task_ids, support_shots, self.splits)

    def __call__(self, chunk: int):
        ids = self.chunks.ids(chunk)
        task_id = self.task_ids[chunk]
        seeds = per_item_seeds(self.seed, ids)
        cond = None
        with torch.no_grad():
            if self.encoder is not None and self.redraw:
                cond = self.encoder(torch.cat([self.supports.draw([chunk], torch_generator(self.seed, Stream.SUPPORT_DRAW, 1, i))
                                               for i in ids.tolist()]).to(self.device))
            elif self.encoder is not None:
                cond = self.encoder(self.supports.draw([chunk]).to(self.device)).expand(len(ids), -1)
            h = self.denoiser.to_latents(sample_latents(
                self.denoiser, self.denoiser.spec["dim"], seeds.tolist(), cond, data_mean=self.denoiser.data_mean,
                num_steps=self.sample_steps, device=self.device))
            thetas = self.norm.denormalize(self.ae.decode(h).cpu().double()).float()
        if not torch.isfinite(thetas).all():
            raise UserError(f"generation produced NaN/inf for task {task_id}; retrain with lower diff_lr")
        splits = task_splits(self.metadata["tasks"][str(task_id)], self.splits)
        acc = accuracies(self.model, self.norm.layout, thetas.to(self.device),
                         {k: tuple(t.to(self.device) for t in splits[k]) for k in ("val", "test")}, self.base)
        return params_table({"model_id": ids.tolist(), "task_id": [task_id] * len(ids), "seed": seeds.tolist(),
                             "step": [0] * len(ids), "params": [thetas.numpy()], "val_acc": acc["val"].tolist(),
                             "test_acc": acc["test"].tolist()})
