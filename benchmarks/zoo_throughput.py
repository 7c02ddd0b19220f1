"""Zoo collection throughput: members/s of a plain in-process loop vs the Ray Data actor pool
with 1 and 2 actors (issue 11 targets: Ray overhead < 10% at 1 actor, >= 1.6x at 2 actors).

All arms train the same tasks-mode members (subset tasks, single-threaded torch, same seeds) and
the Ray arms write the same Parquet parts; wall time includes Ray Data start-up and actor
construction, which is what a user waits for. The three arms run one after the other in this
process, each `--repeats` times (the median is reported), on whatever this machine has free:
on a shared machine, read the ratio next to the load average printed with it.

    .venv/bin/python benchmarks/zoo_throughput.py [--quick]

writes benchmarks/results/zoo_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def plain_loop(cfg) -> float:
    """Seconds to train every member in this process (the same per-member work as an actor)."""
    import torch

    from raygen.seeds import Stream, stream_seed
    from raygen.weightgen.zoo import load_source, split, task_classes, task_splits, train_member
    from raygen.workloads.zoo import zoo_tasks

    torch.set_num_threads(1)
    data = load_source(cfg.source_spec())
    tasks = zoo_tasks(cfg, data)
    splits = split(data.images, data.labels)
    arch = cfg.arch(data.info["shape"], task_classes(tasks[0]))
    start = time.perf_counter()
    for j in range(cfg.jobs):
        t, s = cfg.job(j)
        train_member(arch, task_splits(tasks[t], splits)["train"],
                     init_seed=stream_seed(cfg.seed, Stream.MEMBER_INIT, t, s), order_seed=stream_seed(cfg.seed, Stream.MEMBER_ORDER, t, s),
                     steps=cfg.member_steps, lr=cfg.member_lr, batch_size=cfg.member_batch)
    return time.perf_counter() - start


def ray_arm(cfg, actors: int, root: str) -> float:
    """Seconds of the zoo workload's collection (`raygen zoo` without its report)."""
    from raygen.rundir import RunDir
    from raygen.weightgen.zoo import load_source
    from raygen.workloads.zoo import collect, zoo_tasks

    cfg = cfg.replace(num_actors=actors, storage_path=root, name=f"zoo_{actors}_{time.monotonic_ns()}")
    data = load_source(cfg.source_spec())
    start = time.perf_counter()
    collect(cfg, RunDir(cfg), data, zoo_tasks(cfg, data))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 members x 50 steps, 1 repeat")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo_throughput.json"))
    args = parser.parse_args()
    if args.quick:
        args.members, args.steps, args.repeats = 8, 50, 1

    from raygen import runtime
    from raygen.workloads.zoo import ZooConfig

    cfg = ZooConfig.from_dict(dict(mode="tasks", task_family="subset", zoo_tasks=args.members // 2, seeds=2,
                                         member_steps=args.steps, jobs_per_part=2))
    runtime.init(num_cpus=2)
    arms = {"plain loop": [], "ray 1 actor": [], "ray 2 actors": []}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            arms["plain loop"].append(plain_loop(cfg))
            arms["ray 1 actor"].append(ray_arm(cfg, 1, root))
            arms["ray 2 actors"].append(ray_arm(cfg, 2, root))
    runtime.shutdown()
    seconds = {k: statistics.median(v) for k, v in arms.items()}
    rate = {k: cfg.jobs / s for k, s in seconds.items()}
    result = {
        "members": cfg.jobs, "steps_per_member": args.steps, "repeats": args.repeats,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        "seconds": arms, "members_per_s": rate,
        "ray_overhead_1_actor": seconds["ray 1 actor"] / seconds["plain loop"] - 1,
        "speedup_2_vs_1_actor": seconds["ray 1 actor"] / seconds["ray 2 actors"],
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{cfg.jobs} members x {args.steps} steps, median of {args.repeats}, load average {result['load_average']}")
    print(f"{'arm':<14} {'seconds':>9} {'members/s':>10}")
    for k in arms:
        print(f"{k:<14} {seconds[k]:9.2f} {rate[k]:10.2f}")
    print(f"Ray overhead at 1 actor: {100 * result['ray_overhead_1_actor']:+.0f}% (target < 10%); "
          f"2 vs 1 actor: {result['speedup_2_vs_1_actor']:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()
