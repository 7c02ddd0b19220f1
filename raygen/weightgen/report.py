"""Weight generation's report: p-diff's table, memorisation, held-out tasks, plots and markdown.

Pure torch / numpy / matplotlib (no Ray). `cfg` is the run's `WeightgenConfig` (read, never changed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raygen import plots
from raygen.seeds import Stream, stream_seed, torch_generator
from raygen.threads import one_thread
from raygen.weightgen.evaluate import (accuracies, accuracy_summary, finetune_curve, memorisation,
                                       steps_to_fraction)
from raygen.models.params import ParamLayout, batched_predictions, flatten
from raygen.weightgen.zoo import (base_from, build_classifier, init_model, support_split, task_classes, task_splits,
                                  zoo_splits)

if TYPE_CHECKING:  # the run's config, read only; no import of the workload at run time
    from raygen.workloads.weightgen import WeightgenConfig

NOISE_SIGMAS = (0.001, 0.05, 0.15)  # p-diff's noise-perturbed originals, in normalised space


def _noise_perturbed(thetas, norm, sigma: float, g: torch.Generator):
    """Originals perturbed by N(0, sigma^2) in normalised space (p-diff's baseline)."""
    z = norm.normalize(thetas.double())
    return norm.denormalize(z + sigma * torch.randn(z.shape, generator=g, dtype=z.dtype)).float()


def _random_init(cfg: WeightgenConfig, layout, arch: dict, n: int):
    return torch.stack([flatten(dict(init_model(arch, stream_seed(cfg.seed, Stream.RANDOM_INIT, i)).named_parameters()), layout)
                        for i in range(n)])


@one_thread
def zoo_tables(cfg: WeightgenConfig, thetas, cols, gen, gcols, meta, norm) -> tuple[dict, dict]:
    """p-diff's table on the zoo tasks and the memorisation figures (per task, then pooled)."""
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
            noisy = _noise_perturbed(orig, norm, s, torch_generator(cfg.seed, Stream.NOISE_PERTURB, t))
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


@one_thread
def ae_diagnostics(cfg: WeightgenConfig, thetas, cols, meta, ae, norm) -> dict[str, Any]:
    """Would the autoencoder have caught a collapse? Its reconstructions' test accuracies beside the
    originals' (mean, sd, correlation), and the zoo's and the latents' per-dimension spread beside
    the noise the AE adds to them. `collapsed`: reconstructions' sd below a quarter of the originals'."""
    splits = zoo_splits(meta)
    layout = ParamLayout.from_dict(meta["layout"])
    model = build_classifier(meta["arch"]).eval()
    base = base_from(model, meta)
    with torch.no_grad():
        z = norm.normalize(thetas.double()).float()
        h = ae.encode(z)
        recon = norm.denormalize(ae.decode(h).double()).float()
    acc = np.zeros(len(thetas))
    for t in sorted(set(cols["task_id"].tolist())):
        mine = cols["task_id"] == t
        test = task_splits(meta["tasks"][str(t)], splits)["test"]
        acc[mine] = accuracies(model, layout, recon[torch.as_tensor(mine)], {"test": test}, base)["test"]
    orig = np.asarray(cols["test_acc"], dtype=np.float64)
    corr = float(np.corrcoef(orig, acc)[0, 1]) if orig.std() > 0 and acc.std() > 0 else None
    out = {"recon_acc_mean": float(100 * acc.mean()), "recon_acc_std": float(100 * acc.std()),
           "orig_acc_mean": float(100 * orig.mean()), "orig_acc_std": float(100 * orig.std()),
           "recon_acc_corr": corr, "normalize": norm.kind,
           "zoo_dim_std": float(thetas.double().std(0, correction=0).mean()),
           "normalized_dim_std": float(z.double().std(0, correction=0).mean()),
           "latent_dim_std": float(h.double().std(0, correction=0).mean()),
           "input_noise": cfg.input_noise, "latent_noise": cfg.latent_noise}
    out["collapsed"] = bool(out["orig_acc_std"] > 0 and out["recon_acc_std"] < out["orig_acc_std"] / 4)
    return out


def noise_scale(spec: dict[str, Any]) -> dict[str, Any]:
    """The latent diffusion's noise scale from its denoiser's spec: per dimension (`latent_std`, the
    latents' std over the zoo; noise level sigma is sigma * latent_std[d] in dimension d) or one scalar."""
    if "latent_std" in spec:
        std = spec["latent_std"]
        return {"latent_scale": "dim", "latent_std": std, "latent_std_min": min(std), "latent_std_max": max(std),
                "sigma_data": spec["sigma_data"]}
    return {"latent_scale": "scalar", "sigma_data": spec["sigma_data"]}


def collapse_warning(diag: dict[str, Any]) -> str | None:
    """The console / report line when the AE reconstructs the zoo as (nearly) one model."""
    if not diag["collapsed"]:
        return None
    return (f"warning: the autoencoder's reconstructions collapse: accuracy sd {diag['recon_acc_std']:.2f} points vs "
            f"the originals' {diag['orig_acc_std']:.2f} (latent per-dimension std {diag['latent_dim_std']:.3g}, latent "
            f"noise {diag['latent_noise']:g}); generated models will not have the zoo's spread. Try normalize: weight, "
            "a lower latent_noise or more ae_steps")


def picked_by_support(support_acc: np.ndarray, test_acc: np.ndarray, k: int) -> float:
    """Mean test accuracy of the k models with the best support-set accuracy (ties: lower index)."""
    order = np.argsort(-support_acc, kind="stable")
    return float(test_acc[order[:k]].mean())


def shared_pairs(task: dict[str, Any], zoo_tasks: list[dict[str, Any]]) -> int:
    """The most (class, label) pairs a subset task shares with one zoo task (0 for other families)."""
    if task.get("family") != "subset":
        return 0
    return max((sum(a == b for a, b in zip(task["classes"], z.get("classes", []))) for z in zoo_tasks), default=0)


@one_thread
def heldout_tables(cfg: WeightgenConfig, thetas, cols, gen, gcols, meta) -> dict[str, Any]:
    """Zero-shot accuracy on held-out tasks against what a user would do instead, and fine-tuning
    curves from generated / random / other-task init (the first `finetune_models` of each).

    Baselines: chance; every zoo model (mean); retrieval, the zoo model with the best accuracy on
    the task's support set (`support_shots` training images per class, what the generator is
    conditioned on); the generated models picked the same way (best of N, top-3 mean, as D2NWG's
    code reports)."""
    splits = zoo_splits(meta)
    layout = ParamLayout.from_dict(meta["layout"])
    model = build_classifier(meta["arch"]).eval()
    n = cfg.finetune_models
    zero_shot, other_zero_shot, curves = [], [], {"generated": [], "random": [], "other_task": []}
    chance, retrieval, top1, top3, overlap = [], [], [], [], {}
    zoo_defs = [meta["tasks"][str(t)] for t in sorted(set(cols["task_id"].tolist()))]
    rand = _random_init(cfg, layout, meta["arch"], n)
    for t in cfg.heldout_tasks:
        task = meta["tasks"][str(t)]
        sp = task_splits(task, splits)
        chance.append(1.0 / task_classes(task))
        g = gen[gcols["task_id"] == t]
        g_test = gcols["test_acc"][gcols["task_id"] == t]
        zero_shot.append(g_test)
        support = support_split(*sp["train"], task_classes(task), cfg.support_shots)
        zoo_acc = accuracies(model, layout, thetas, {"test": sp["test"], "support": support})
        other_zero_shot.append(zoo_acc["test"])
        retrieval.append(picked_by_support(zoo_acc["support"], zoo_acc["test"], 1))
        g_support = accuracies(model, layout, g, {"support": support})["support"]
        top1.append(picked_by_support(g_support, g_test, 1))
        top3.append(picked_by_support(g_support, g_test, 3))
        overlap[str(t)] = shared_pairs(task, zoo_defs)
        inits = {"generated": g[:n], "random": rand, "other_task": thetas[:: max(1, len(thetas) // n)][:n]}
        for arm, vecs in inits.items():
            for i, v in enumerate(vecs):
                curves[arm].append(finetune_curve(model, layout, v, sp["train"], sp["test"],
                                                  steps=cfg.finetune_steps, every=cfg.finetune_every,
                                                  lr=cfg.finetune_lr, batch_size=cfg.member_batch, order=torch_generator(cfg.seed, Stream.FINETUNE, i)))
    mean_curves = {arm: np.mean(c, 0) for arm, c in curves.items()}
    return {
        "tasks": cfg.heldout_tasks,
        "chance": float(100 * np.mean(chance)),
        "generated": {"zero_shot_mean": float(100 * np.concatenate(zero_shot).mean()),
                      "zero_shot_max": float(100 * np.concatenate(zero_shot).max()),
                      "top1_zero_shot_mean": float(100 * np.mean(top1)),
                      "top3_zero_shot_mean": float(100 * np.mean(top3))},
        "other_task_zoo": {"zero_shot_mean": float(100 * np.concatenate(other_zero_shot).mean())},
        "retrieval": {"zero_shot_mean": float(100 * np.mean(retrieval))},
        "shared_pairs": overlap,
        "steps_to_90": {arm: steps_to_fraction(c, cfg.finetune_every) for arm, c in mean_curves.items()},
        "final_acc": {arm: float(100 * c[-1]) for arm, c in mean_curves.items()},
        "curves": {arm: (100 * c).tolist() for arm, c in mean_curves.items()},
        "curve_steps": list(range(0, cfg.finetune_steps + 1, cfg.finetune_every)),
    }


def _figure(run_dir, name: str, xlabel: str, ylabel: str, draw) -> str:
    """One axes drawn by `draw(ax)`, labelled, with a legend, saved as `name`."""
    fig, ax = plots.pyplot().subplots(figsize=(6, 4))
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    run_dir.save_figure(name, fig)
    return name


def plots_of(run_dir, cols, gcols, memo: dict | None, held: dict | None) -> list[str]:
    zoo_tasks = np.isin(gcols["task_id"], np.unique(cols["task_id"]))

    def histogram(ax):
        both = 100 * np.concatenate([cols["test_acc"], gcols["test_acc"][zoo_tasks]])
        bins = np.linspace(both.min(), both.max() + 1e-9, 31)  # shared bins: the bars are comparable
        ax.hist(100 * cols["test_acc"], bins=bins, alpha=0.6, label="original")
        ax.hist(100 * gcols["test_acc"][zoo_tasks], bins=bins, alpha=0.6, label="generated")

    def nearest(ax):
        raw = memo["raw"]
        ax.scatter(raw["orig_nearest_dist"], raw["orig_nearest_iou"], s=8, label="original vs nearest original")
        ax.scatter(raw["gen_nearest_dist"], raw["gen_nearest_iou"], s=8, label="generated vs nearest original")

    def curves(ax):
        for arm, c in held["curves"].items():
            ax.plot(held["curve_steps"], c, label=f"{arm} init")
        ax.axhline(held["chance"], color="gray", ls=":", label="chance")

    names = [_figure(run_dir, "accuracy_hist.png", "test accuracy (%)", "models", histogram)]
    if memo:
        names.append(_figure(run_dir, "memorisation.png", "distance to nearest original (weight space)",
                             "IoU of wrongly predicted test images", nearest))
    if held:
        names.append(_figure(run_dir, "finetune.png", "fine-tuning step", "test accuracy (%)", curves))
    return names


def markdown(cfg: WeightgenConfig, summary: dict[str, Any], figures: list[str]) -> str:
    lines = [f"# raygen weightgen: {cfg.name} ({cfg.mode} mode, {cfg.task_family} tasks)", "",
             f"Zoo: {summary['zoo']['members']} members ({summary['zoo']['parameters']} generated parameters each) "
             f"from {cfg.zoo_tasks} task(s) x {cfg.seeds} seed(s); generated: {cfg.n_generate} per task.", "",
             "## Zoo tasks: test accuracy (%)", "", "| models | mean | median | max | min | n |", "|---|---|---|---|---|---|"]
    for key, row in summary["table"].items():
        label = {"original": "original checkpoints", "generated": "generated", "random": "random init"}.get(
            key, f"noise-perturbed originals, sigma = {key.split('_', 1)[-1]}")
        lines.append(f"| {label} | {row['acc_mean']:.2f} | {row['acc_median']:.2f} | {row['acc_max']:.2f} | "
                     f"{row['acc_min']:.2f} | {row['n']} |")
    d = summary.get("ae")
    if d:
        corr = "n/a" if d["recon_acc_corr"] is None else f"{d['recon_acc_corr']:.2f}"
        lines += ["", f"## Autoencoder ({d['normalize']} normalisation)", "",
                  "| | mean acc (%) | sd (points) |", "|---|---|---|",
                  f"| originals | {d['orig_acc_mean']:.2f} | {d['orig_acc_std']:.2f} |",
                  f"| reconstructions | {d['recon_acc_mean']:.2f} | {d['recon_acc_std']:.2f} |", "",
                  f"Correlation of a reconstruction's accuracy with its original's: {corr}. Mean per-dimension std: "
                  f"zoo {d['zoo_dim_std']:.3g} (raw), {d['normalized_dim_std']:.3g} (normalised; input noise "
                  f"{d['input_noise']:g}), latents {d['latent_dim_std']:.3g} (latent noise {d['latent_noise']:g})."]
        warning = collapse_warning(d)
        if warning:
            lines += ["", f"**{warning}**"]
    n = summary.get("diffusion")
    if n:
        lines += ["", "Latent diffusion noise: " + (
            f"per dimension, sigma x the dimension's std over the zoo ({n['latent_std_min']:.3g}..{n['latent_std_max']:.3g})"
            if n["latent_scale"] == "dim" else f"one scalar scale, sigma_data {n['sigma_data']:.3g}") + "."]
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
                  f"max {h['generated']['zero_shot_max']:.2f}%; picked by support-set accuracy: best of "
                  f"{cfg.n_generate} {h['generated']['top1_zero_shot_mean']:.2f}%, top-3 mean "
                  f"{h['generated']['top3_zero_shot_mean']:.2f}%",
                  f"- baselines: chance {h['chance']:.1f}%, every zoo model {h['other_task_zoo']['zero_shot_mean']:.2f}%, "
                  f"retrieval (the zoo model best on the support set) {h['retrieval']['zero_shot_mean']:.2f}%",
                  "- (class, label) pairs a held-out task shares with its closest zoo task: "
                  + ", ".join(f"task {t}: {k}" for t, k in h["shared_pairs"].items()), "",
                  "| init | steps to 90% of final | final accuracy (%) |", "|---|---|---|"]
        for arm in h["steps_to_90"]:
            lines.append(f"| {arm} | {h['steps_to_90'][arm]} | {h['final_acc'][arm]:.2f} |")
    lines += [""] + [f"![{p}]({p})" for p in figures]
    return "\n".join(lines) + "\n"
