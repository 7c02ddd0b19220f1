"""Generation: weight vectors drawn from the latent diffusion, decoded, evaluated, as part rows.

`Generator` is a chunk worker (`raygen.fanout`): one chunk is one task's `n_generate` vectors; vector
i is drawn from its own seed (`raygen.seeds.per_item_seeds`) and, with `support_draw: random`,
conditioned on its own support set (stream SUPPORT_DRAW, index (1, i)), so a part does not depend
on which worker drew it or how many ran.
"""

from __future__ import annotations

from typing import Any

import torch

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
                 n_generate: int, support_shots: int, sample_steps: int, support_draw: str = "fixed"):
        use_one_thread()
        self.metadata, self.task_ids, self.seed = metadata, task_ids, seed
        self.sample_steps, self.redraw = sample_steps, support_draw == "random"
        self.chunks = Chunks(len(task_ids) * n_generate, n_generate)
        self.ae, self.norm, _ = load_autoencoder(ae_uri)
        self.denoiser, self.encoder = load_diffusion(diff_uri)
        self.model = build_classifier(metadata["arch"]).eval()
        self.base = base_from(self.model, metadata)
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
                                               for i in ids.tolist()]))
            elif self.encoder is not None:
                cond = self.encoder(self.supports.draw([chunk])).expand(len(ids), -1)
            h = sample_latents(self.denoiser, self.denoiser.spec["dim"], seeds.tolist(), cond,
                               data_mean=self.denoiser.data_mean, num_steps=self.sample_steps)
            thetas = self.norm.denormalize(self.ae.decode(h).double()).float()
        if not torch.isfinite(thetas).all():
            raise UserError(f"generation produced NaN/inf for task {task_id}; retrain with lower diff_lr")
        splits = task_splits(self.metadata["tasks"][str(task_id)], self.splits)
        acc = accuracies(self.model, self.norm.layout, thetas, {"val": splits["val"], "test": splits["test"]},
                         self.base)
        return params_table({"model_id": ids.tolist(), "task_id": [task_id] * len(ids), "seed": seeds.tolist(),
                             "step": [0] * len(ids), "params": [thetas.numpy()], "val_acc": acc["val"].tolist(),
                             "test_acc": acc["test"].tolist()})
