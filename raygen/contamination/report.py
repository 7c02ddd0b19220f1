"""The study's figures: the ratio x arm table (mean ± std over seeds), the paper-shape checks, plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from raygen import plots
from raygen.contamination.diversity import MIN_LABEL_AGREEMENT
from raygen.contamination.mixing import ARMS

# ResNet-50 ImageNet top-1 read off Hataya et al.'s figure (ICCV 2023), for the report's comparison.
PAPER = {"ratios": [0.0, 0.2, 0.4, 0.8, 1.0], "generated": [75.6, 74.6, 72.8, 65.2, 16.0],
         "control": [75.6, 75.3, 74.0, 68.4, 61.5]}


def _stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(trials: list[dict[str, Any]], corruptions: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (ratio, arm): mean and std over seeds of clean, OOD (mean of corruptions) and each corruption."""
    rows = []
    for ratio in sorted({t["ratio"] for t in trials}):
        for arm in ARMS:
            mine = [t for t in trials if t["ratio"] == ratio and t["arm"] == arm]
            if not mine:
                continue
            row: dict[str, Any] = {"ratio": ratio, "arm": arm, "seeds": len(mine)}
            for metric in ("clean_acc", "ood_acc", *(f"{c}_acc" for c in corruptions)):
                row[metric], row[f"{metric}_std"] = _stats([t[metric] for t in mine])
            rows.append(row)
    return rows


def shape_checks(rows: list[dict[str, Any]], metric: str = "clean_acc") -> dict[str, bool | None]:
    """The paper's shape on the mean accuracies: generated-arm accuracy never rises with r, generated
    below control at every r > 0, and the control-minus-generated gap never shrinks as r grows."""
    gen = {r["ratio"]: r[metric] for r in rows if r["arm"] == "generated"}
    ctl = {r["ratio"]: r[metric] for r in rows if r["arm"] == "control"}
    ratios = sorted(set(gen) & set(ctl))
    if len(ratios) < 2:
        return {"monotone_drop": None, "generated_below_control": None, "gap_widens": None}
    gaps = [ctl[r] - gen[r] for r in ratios]
    return {
        "monotone_drop": all(gen[a] >= gen[b] for a, b in zip(ratios, ratios[1:])),
        "generated_below_control": all(gen[r] < ctl[r] for r in ratios if r > 0),
        "gap_widens": all(g1 >= g0 for g0, g1 in zip(gaps, gaps[1:])),
    }


def accuracy_figure(rows: list[dict[str, Any]]):
    """Clean and OOD accuracy vs replaced fraction, one line per arm, error bars = std over seeds."""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric, title in zip(axes, ("clean_acc", "ood_acc"), ("clean real test set", "corrupted test sets (mean)")):
        for arm, style in zip(ARMS, ("o-", "s--")):
            mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["ratio"])
            ax.errorbar([100 * r["ratio"] for r in mine], [100 * r[metric] for r in mine],
                        yerr=[100 * r[f"{metric}_std"] for r in mine], fmt=style, capsize=3,
                        label="generated replaces real" if arm == "generated" else "held-back real replaces real")
        ax.set_title(title)
        ax.set_xlabel("replaced fraction r (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), mean ± std over seeds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _pm(row: dict[str, Any], metric: str) -> str:
    return f"{100 * row[metric]:.1f} ± {100 * row[f'{metric}_std']:.1f}"


def markdown(summary: dict[str, Any], corruptions: tuple[str, ...]) -> str:
    rows, info = summary["table"], summary["data"]
    lines = [
        f"# Contamination study: {summary['name']}",
        "",
        f"Real data `{info['real']}`: {info['train']} training, {info['holdout']} held-back (control pool), "
        f"{info['test']} test images. Generated data `{info['generated']}`: {info['generated_rows']} labelled images.",
        f"A fraction r of the training set is replaced per class (size and class counts fixed) by generated "
        f"images or, in the control arm, by held-back real images. One CNN per (r, arm, seed) as a Ray Tune "
        f"trial ({summary['trials']} trials, seeds {summary['seeds']}, {summary['epochs']} epochs each); "
        f"OOD = mean accuracy over corrupted test sets ({', '.join(corruptions)}).",
        "",
        "| r | arm | clean acc (%) | OOD acc (%) | " + " | ".join(f"{c} (%)" for c in corruptions) + " |",
        "|---|---|---|---|" + "---|" * len(corruptions),
    ]
    for r in rows:
        lines.append(f"| {r['ratio']:.2f} | {r['arm']} | {_pm(r, 'clean_acc')} | {_pm(r, 'ood_acc')} | "
                     + " | ".join(_pm(r, f"{c}_acc") for c in corruptions) + " |")
    checks = summary["shape"]
    yes = {True: "yes", False: "no", None: "n/a"}
    agreement = summary["diversity"]["generated"]["label_agreement"]
    lines += [
        "",
        "![accuracy vs replaced fraction](accuracy_vs_ratio.png)",
        "",
        "## Does it show the paper's shape? (clean accuracy, means over seeds)",
        "",
    ]
    if agreement < MIN_LABEL_AGREEMENT:
        lines += [f"**Warning: the generated labels look wrong.** A classifier trained on the real data agrees with "
                  f"only {100 * agreement:.1f} % of them (threshold {100 * MIN_LABEL_AGREEMENT:.0f} %): the generated "
                  "arm then measures label noise, not generated-image quality, and the checks below do not mean "
                  "what they say. Check that each class folder holds the class it is named after.", ""]
    lines += [
        f"- generated-arm accuracy never rises as r grows: **{yes[checks['monotone_drop']]}**",
        f"- generated below control at every r > 0: **{yes[checks['generated_below_control']]}**",
        f"- gap (control − generated) never shrinks as r grows: **{yes[checks['gap_widens']]}**",
        "",
        "Paper (ResNet-50 on ImageNet, top-1 % at r = " + " / ".join(f"{int(100 * r)}" for r in PAPER["ratios"])
        + f"): generated {' / '.join(map(str, PAPER['generated']))}; real-web control "
        + f"{' / '.join(map(str, PAPER['control']))}.",
        "",
        "## Diversity: improved precision/recall against the real training set",
        "",
        f"{summary['diversity_images']} images per set (a seeded subset); features: a CNN trained on those real "
        f"training images; k = {summary['pr_k']}. The held-back real images are the yardstick.",
        "",
        "| images | precision | recall | Fréchet distance | KID | label agreement |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in summary["diversity"].items():
        lines.append(f"| {name} | {d['precision']:.3f} | {d['recall']:.3f} | {d['fd']:.3f} | {d['kid']:.4f} | "
                     f"{d['label_agreement']:.3f} |")
    lines += ["", "![real vs generated](samples.png)", "",
              f"Per-trial curves: TensorBoard (`tensorboard --logdir {summary['run_dir']}`).", ""]
    return "\n".join(lines)
