"""Zoo collection throughput: members/s of a plain in-process loop vs `raygen zoo`'s collection
on 1 and 2 Ray workers (issue 11 targets: Ray overhead < 10 % at 1 worker, >= 1.6x at 2 workers).

All arms train the same tasks-mode members (subset tasks, single-threaded torch, same seeds) and
the Ray arms write the same Parquet parts; wall time includes Ray Data's start-up and each
worker building its state, which is what a user waits for. A warm-up collection first starts
Ray's worker processes (their imports are a once-per-session cost: chunks run as tasks on reused
workers, `raygen.fanout`). The arms are interleaved within each repeat and the ratios
paired per repeat; median and min–max are reported with the machine's load.

    .venv/bin/python benchmarks/zoo_throughput.py [--quick] [--repeats K]

writes benchmarks/results/zoo_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchlib import machine, show, spread, table, write


def plain_loop(cfg) -> float:
    """Seconds to train every member in this process (the same per-member work as an actor)."""
    import torch

    from raygen.seeds import Stream, stream_seed, torch_generator
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
                     init_seed=stream_seed(cfg.seed, Stream.MEMBER_INIT, t, s), order=torch_generator(cfg.seed, Stream.MEMBER_ORDER, t, s),
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
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 members x 50 steps, 1 repeat, no ratios")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.members, args.steps, args.repeats = 8, 50, 1
    before = machine()

    from raygen import runtime
    from raygen.workloads.zoo import ZooConfig

    cfg = ZooConfig.from_dict(dict(mode="tasks", task_family="subset", zoo_tasks=args.members // 2, seeds=2,
                                   member_steps=args.steps, jobs_per_part=2))
    runtime.init(num_cpus=2)
    arms: dict[str, list[float]] = {"plain loop": [], "ray 1 worker": [], "ray 2 workers": []}
    with tempfile.TemporaryDirectory() as root:
        # warm-ups: Ray's worker processes import torch; this process's first member pays one-time costs (~1 s)
        ray_arm(cfg.replace(zoo_tasks=2, member_steps=5), 2, root)
        plain_loop(cfg.replace(zoo_tasks=1, member_steps=5))
        for _ in range(args.repeats):
            arms["plain loop"].append(plain_loop(cfg))
            arms["ray 1 worker"].append(ray_arm(cfg, 1, root))
            arms["ray 2 workers"].append(ray_arm(cfg, 2, root))
    runtime.shutdown()
    result = {"members": cfg.jobs, "steps_per_member": args.steps, "repeats": args.repeats, "quick": args.quick,
              "machine_before": before, "seconds": {k: spread(v) for k, v in arms.items()},
              "members_per_s": {k: spread([cfg.jobs / x for x in v]) for k, v in arms.items()}}
    rows = [(k, f"{show(result['seconds'][k], '.2f', ' s')}  {show(result['members_per_s'][k], '.2f', ' members/s')}")
            for k in arms]
    if not args.quick:
        result["ray_overhead_pct_1_worker"] = spread([100 * (r / p - 1) for r, p in
                                                      zip(arms["ray 1 worker"], arms["plain loop"])])
        result["speedup_2_vs_1_worker"] = spread([a / b for a, b in zip(arms["ray 1 worker"], arms["ray 2 workers"])])
        rows += [("Ray overhead at 1 worker", show(result["ray_overhead_pct_1_worker"], "+.1f", " %") + "  (target < 10 %)"),
                 ("2 workers vs 1", show(result["speedup_2_vs_1_worker"], ".2f", "x") + "  (target >= 1.6x)")]
    result["machine_after"] = machine()
    rows.append(("machine", f"{before['cpus']} cpus, load {before['load_average_1_5_15'][0]} before, "
                            f"{result['machine_after']['load_average_1_5_15'][0]} after"))
    path = write("zoo_throughput_quick" if args.quick else "zoo_throughput", result)
    print(f"{cfg.jobs} members x {args.steps} steps")
    table(rows)
    print(f"(median and min–max of {args.repeats} repeats; wrote {path})")


if __name__ == "__main__":
    main()
