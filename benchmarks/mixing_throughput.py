"""Ray Data mixing pipeline feeding a training loop vs an in-memory PyTorch DataLoader on the same rows.

Both arms train the same small CNN (raygen's ConvClassifier, one thread) for one epoch over the
same mix (ratio r of a synthetic 8x8 labelled set replaced by "generated" rows, exact per class):
- baseline: the mixed rows built in memory (numpy), `torch.utils.data.DataLoader(shuffle=True)`;
- candidate: `raygen.contamination.mixing.mixed_dataset(...)` streamed with `iter_torch_batches`.
Reported per arm: rows/s over the epoch, and the time the loop is blocked waiting for the next
batch as a % of the epoch (target: < 5%, and candidate rows/s >= 80% of the baseline). Also the
rows/s of each data path alone (no training). Writes benchmarks/results/mixing_throughput[_quick].json.

    python benchmarks/mixing_throughput.py [--quick] [--rows N] [--ratio R]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raygen import runtime
from raygen.contamination.mixing import mixed_dataset, plan_mix
from raygen.models.classifier import ConvClassifier

BATCH = 64


def make_rows(ids: np.ndarray, offset: float) -> dict[str, np.ndarray]:
    """Deterministic synthetic 8x8 images and 10-class labels, a pure function of the ids."""
    pix = ((ids[:, None] * 2654435761 + np.arange(64)[None] * 40503) % 1000) / 1000.0
    return {"id": ids.astype(np.int64), "image": (pix.reshape(-1, 1, 8, 8) * 0.5 + offset).astype(np.float32),
            "label": (ids % 10).astype(np.int64)}


def ray_source(n: int, offset: float, blocks: int):
    import ray

    return ray.data.range(n, override_num_blocks=blocks).map_batches(
        lambda b: make_rows(np.asarray(b["id"]), offset), batch_format="numpy")


def timed_loop(batches, train: bool) -> dict[str, float]:
    """Iterate (x, y) batches, optionally one Adam step each; time spent waiting on the iterator."""
    torch.manual_seed(0)
    model = ConvClassifier(1, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows, blocked = 0, 0.0
    start = time.perf_counter()
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        blocked += time.perf_counter() - t
        if train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rows += len(y)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "blocked_pct": 100 * blocked / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int, default=40000)
    p.add_argument("--ratio", type=float, default=0.4)
    args = p.parse_args()
    n = 4000 if args.quick else args.rows
    torch.set_num_threads(1)
    runtime.init(num_cpus=2)

    ids = np.arange(n, dtype=np.int64)
    plan = plan_mix(ids, ids % 10, ids, ids % 10, ratio=args.ratio, arm="generated", seed=0)
    real, gen = make_rows(plan.real_ids, 0.0), make_rows(plan.replacement_ids, 0.25)
    x = torch.from_numpy(np.concatenate([real["image"], gen["image"]]))
    y = torch.from_numpy(np.concatenate([real["label"], gen["label"]]))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))

    def streamed():
        ds = mixed_dataset(ray_source(n, 0.0, 8), ray_source(n, 0.25, 8), [plan], seed=0)
        for b in ds.select_columns(["image", "label"]).iter_torch_batches(batch_size=BATCH, prefetch_batches=2):
            yield b["image"], b["label"]

    results = {"rows": n, "ratio": args.ratio, "batch_size": BATCH, "arms": {}}
    for arm, make in (("in-memory DataLoader", lambda: loader), ("Ray Data mixing", streamed)):
        results["arms"][arm] = {"data_only": timed_loop(make(), train=False), "training": timed_loop(make(), train=True)}
    base, cand = results["arms"]["in-memory DataLoader"], results["arms"]["Ray Data mixing"]
    results["training_throughput_ratio"] = cand["training"]["rows_per_s"] / base["training"]["rows_per_s"]
    results["targets_met"] = {"blocked_under_5pct": cand["training"]["blocked_pct"] < 5.0,
                              "throughput_at_least_80pct": results["training_throughput_ratio"] >= 0.8}

    print(f"mixing throughput: {n} rows, r = {args.ratio}, batch {BATCH} (first epoch includes pipeline start-up)")
    print(f"{'arm':<22} {'data-only rows/s':>17} {'train rows/s':>13} {'blocked % of epoch':>19}")
    for arm, r in results["arms"].items():
        print(f"{arm:<22} {r['data_only']['rows_per_s']:>17.0f} {r['training']['rows_per_s']:>13.0f} "
              f"{r['training']['blocked_pct']:>19.1f}")
    print(f"candidate / baseline training throughput: {results['training_throughput_ratio']:.2f}; "
          f"targets met: {results['targets_met']}")
    out = Path(__file__).parent / "results" / f"mixing_throughput{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
