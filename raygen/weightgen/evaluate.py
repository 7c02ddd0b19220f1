"""Evaluation of generated weights: accuracy summaries, memorisation, fine-tuning curves.

Memorisation (p-diff Sec. 4.3): for each generated model g, its nearest original n(g) in weight
space (Euclidean distance of the generated parameter vectors) and the IoU of their sets of wrongly
predicted test images, |W_g & W_n| / |W_g | W_n|. The same numbers for each original against its
nearest *other* original give the reference: generated models that are mere copies would sit at
distance ~0 and IoU ~1, far below / above the original-vs-original values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from raygen.models.params import ParamLayout, base_state, batched_accuracy, unflatten
from raygen.weightgen.zoo import fit


def accuracy_summary(acc: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Mean / median / max / min of accuracies given in [0, 1], reported in percent."""
    a = 100.0 * np.asarray(acc, dtype=np.float64)
    return {"acc_mean": float(a.mean()), "acc_median": float(np.median(a)), "acc_max": float(a.max()),
            "acc_min": float(a.min()), "n": int(a.size)}


def wrong_iou(pred_a: torch.Tensor, pred_b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IoU of the wrongly predicted sets of two prediction vectors (broadcasts over leading dims);
    1 when neither model makes a mistake."""
    wa, wb = pred_a != y, pred_b != y
    union = (wa | wb).sum(-1)
    return torch.where(union > 0, (wa & wb).sum(-1) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))


def memorisation(gen: torch.Tensor, orig: torch.Tensor, pred_gen: torch.Tensor, pred_orig: torch.Tensor,
                 y: torch.Tensor) -> dict[str, np.ndarray]:
    """Per generated model: distance to and wrong-set IoU with its nearest original; per original:
    the same against its nearest other original (needs >= 2 originals)."""
    d_go = torch.cdist(gen.double(), orig.double())
    g_dist, g_idx = d_go.min(1)
    d_oo = torch.cdist(orig.double(), orig.double()).fill_diagonal_(float("inf"))
    o_dist, o_idx = d_oo.min(1)
    return {
        "gen_nearest_dist": g_dist.numpy(), "gen_nearest_iou": wrong_iou(pred_gen, pred_orig[g_idx], y).numpy(),
        "orig_nearest_dist": o_dist.numpy(), "orig_nearest_iou": wrong_iou(pred_orig, pred_orig[o_idx], y).numpy(),
    }


def finetune_curve(model: nn.Module, layout: ParamLayout, theta0: torch.Tensor,
                   train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], *,
                   steps: int, every: int, lr: float, batch_size: int, order: torch.Generator) -> np.ndarray:
    """Test accuracy (in [0, 1]) at steps 0, every, 2 every, ..., steps of training layout's tensors
    from theta0 (the rest of `model` fixed) with Adam on `train`, batches drawn from `order`."""
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name, value in unflatten(theta0.to(torch.float32), layout).items():
            params[name].copy_(value)

    def accuracy() -> float:
        with torch.no_grad():
            return float((net(test[0]).argmax(-1) == test[1]).double().mean())

    curve = [accuracy()]
    fit(net, layout.names, *train, steps=steps, lr=lr, batch_size=batch_size,
        generator=order, every=every, callback=lambda _step: curve.append(accuracy()))
    return np.asarray(curve)


def steps_to_fraction(curve: np.ndarray, every: int, fraction: float = 0.9) -> int:
    """The first logged step at which the accuracy reaches `fraction` of the curve's final value."""
    curve = np.asarray(curve)
    return int(np.flatnonzero(curve >= fraction * curve[-1])[0]) * every


def accuracies(model: nn.Module, layout: ParamLayout, thetas: torch.Tensor,
               splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               base: Mapping[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Batched accuracy of every vector in thetas on each named split."""
    base = base_state(model) if base is None else base
    return {k: batched_accuracy(model, base, layout, thetas.float(), x, y).cpu().numpy() for k, (x, y) in splits.items()}
