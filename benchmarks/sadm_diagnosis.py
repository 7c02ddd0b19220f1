"""Why the current SADM term hurts: the structure distance d per noise level sigma (issue 12).

For each seed's lambda = 0 base run of benchmarks/sadm_quality.py (plain training with the
current-form discriminator trained alongside), d is measured on batches of 64 real digits with ONE
shared sigma per batch, between the real batch x0 and its denoised batch D(x0 + sigma eps, sigma):
    d_cur   the current form: mean squared difference of cosine affinities, trained discriminator
    d_js    the gated form's distance (row-softmax JS, tau = 0.1) on the same embeddings
and the same for the exact optimal denoiser of the empirical data, D*(x, sigma) = E[x0 | x] =
sum_j x_j softmax_j(-|x - x_j|^2 / (2 sigma^2)) over all 1797 digits: if D* also has a large d,
the floor is the comparison's, not the model's, and minimising d moves D away from E[x0 | x].
Also reported: the share of training rows per sigma bin under EDM's log-normal (-1.2, 1.2).

    python benchmarks/sadm_diagnosis.py          # needs the base runs (sadm_quality.py --stage base)
    python benchmarks/sadm_diagnosis.py --quick  # on the --quick bases, 4 batches per sigma

Writes benchmarks/results/sadm_diagnosis.json and sadm_diagnosis.png (d vs sigma).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from raygen.data import digits_arrays
from raygen.diffusion import StructureEncoder, structure_distance
from raygen.diffusion.structure import js_structure_distance
from raygen.models import load_denoiser
from raygen.train_loop import _read_checkpoint

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BINS = ((0.0, 0.1), (0.1, 0.5), (0.5, 1.0), (1.0, math.inf))


def optimal_denoiser(data: torch.Tensor):
    """E[x0 | x] under the empirical distribution of `data` (the best any denoiser can do on it)."""
    flat = data.flatten(1).double()

    def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
        logits = -torch.cdist(x.flatten(1).double(), flat).pow(2) / (2 * sigma**2)
        return (logits.softmax(1) @ flat).view_as(x).to(x.dtype)

    return D


def lognormal_share(lo: float, hi: float, p_mean: float = -1.2, p_std: float = 1.2) -> float:
    cdf = lambda s: 0.5 * (1 + math.erf((math.log(s) - p_mean) / (p_std * math.sqrt(2)))) if s > 0 else 0.0  # noqa: E731
    return (1.0 if hi == math.inf else cdf(hi)) - cdf(lo)


@torch.no_grad()
def measure(ckpt: Path, images: torch.Tensor, batches: int, seed: int) -> dict:
    saved = _read_checkpoint(ckpt, 0)
    model = load_denoiser(ckpt)
    model.load_state_dict(saved["modules"]["denoiser"])  # the trained (non-EMA) denoiser the term acts on
    encoder = StructureEncoder(1, embed_dim=64)
    encoder.load_state_dict(saved["modules"]["encoder"])
    optimal = optimal_denoiser(images)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for sigma in SIGMAS:
        rows = {"model_cur": [], "model_js": [], "optimal_cur": [], "optimal_js": []}
        for _ in range(batches):
            x0 = images[torch.randperm(len(images), generator=g)[:64]]
            x = x0 + sigma * torch.randn(x0.shape, generator=g)
            z0 = encoder(x0)
            for who, D in (("model", model), ("optimal", optimal)):
                z = encoder(D(x, sigma))
                rows[f"{who}_cur"].append(structure_distance(z0, z).item())
                rows[f"{who}_js"].append(js_structure_distance(z0, z).item())
        out[str(sigma)] = {k: statistics.mean(v) for k, v in rows.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "raygen_sadm_study"))
    args = p.parse_args()
    from sadm_quality import BASE_STEPS, SEEDS  # benchmarks/ is on the path when run as a script

    base_steps, seeds, batches = (60, range(2), 4) if args.quick else (BASE_STEPS, range(SEEDS), 20)
    root = Path(args.workdir) / ("quick" if args.quick else "full")
    images = torch.from_numpy(digits_arrays()[0])
    per_seed = []
    for s in seeds:
        ckpt = root / f"base_seed{s}" / f"checkpoint_{base_steps:06d}"
        if not ckpt.exists():
            raise SystemExit(f"no base run at {ckpt}; run benchmarks/sadm_quality.py --stage base first")
        per_seed.append(measure(ckpt, images, batches, seed=s))
    keys = ("model_cur", "optimal_cur", "model_js", "optimal_js")
    table = {sig: {k: {"mean": statistics.mean(r[str(sig)][k] for r in per_seed),
                       "std": statistics.stdev(r[str(sig)][k] for r in per_seed) if len(per_seed) > 1 else 0.0}
                   for k in keys} for sig in SIGMAS}
    shares = {f"{lo}-{hi}": lognormal_share(lo, hi) for lo, hi in BINS}
    print(f"structure distance d per sigma (one sigma per batch of 64; {batches} batches x {len(per_seed)} seeds, "
          f"{base_steps}-step lambda = 0 runs and their trained discriminators); mean +- std over seeds")
    print(f"{'sigma':>6}" + "".join(f"{k:>20}" for k in keys))
    for sig in SIGMAS:
        print(f"{sig:>6}" + "".join(f"{table[sig][k]['mean']:>12.3f} +- {table[sig][k]['std']:<5.3f}" for k in keys))
    print("share of training rows per sigma bin (EDM log-normal -1.2, 1.2): "
          + ", ".join(f"{b}: {v:.2f}" for b, v in shares.items()))
    results = Path(__file__).parent / "results"
    suffix = "_quick" if args.quick else ""
    path = results / f"sadm_diagnosis{suffix}.json"
    path.write_text(json.dumps({"sigmas": SIGMAS, "table": {str(k): v for k, v in table.items()},
                                "training_share_per_bin": shares, "per_seed": per_seed,
                                "batches": batches, "base_steps": base_steps}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, dist_key, title in ((axes[0], "cur", "current: squared cosine-affinity diff."), (axes[1], "js", "row-softmax JS (tau 0.1)")):
        for who in ("model", "optimal"):
            m = [table[s][f"{who}_{dist_key}"]["mean"] for s in SIGMAS]
            e = [table[s][f"{who}_{dist_key}"]["std"] for s in SIGMAS]
            ax.errorbar(SIGMAS, m, yerr=e, marker="o", label="trained D" if who == "model" else "optimal D* (empirical)")
        ax.axvline(0.5, color="grey", ls=":", label="sigma_data")
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_ylabel("d")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results / f"sadm_diagnosis{suffix}.png", dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
