"""A slice of `jobs/cmt_gasoline_paper.yaml` (the authors' protocol and their splits) run in-process,
for a machine that cannot run the 1,440 trials: chosen (target, split) pairs, method cmt (all INN
settings of the job) and target-only, through the workload's own `run_trial` (what each Tune trial
runs, so the numbers are the job's), in a process pool without Ray.

Every evaluation is appended to a JSON-lines file as it happens, so a slice stopped early still
reports: per (target, split), cmt selected by nested leave-one-out over the evaluations every one
of its settings has reached (the epoch it got to is printed), target-only, both relative to the
target's leave-one-out reference (`raygen.cmt.report`), with the hindsight-best cmt evaluation (a
diagnostic that peeks at the test set) and the paper's per-country Table 2 numbers (means over its
10 splits: a pattern, not the same measurement; its target-only code is not published).

    .venv/bin/python benchmarks/cmt_paper_slice.py U.S.A.:0 GERMANY:0 --workers 2 --out slice.jsonl
    .venv/bin/python benchmarks/cmt_paper_slice.py --report slice.jsonl
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

JOB = Path(__file__).resolve().parents[1] / "jobs" / "cmt_gasoline_paper.yaml"
METHODS = ["cmt", "target_only"]


def load_config(overrides: list[str]):
    from raygen.jobs import load_job

    return load_job(str(JOB), [f"methods=[{', '.join(METHODS)}]", *overrides]).config


def one_trial(job: dict) -> None:
    from raygen.threads import use_one_thread
    from raygen.workloads.cmt import load_panel, run_trial

    use_one_thread()
    config = load_config(job["overrides"])
    spec, out = job["spec"], job["out"]

    def on_eval(result: dict) -> None:
        with open(out, "a") as f:  # one short line per write: the pool's processes do not interleave it
            f.write(json.dumps({"target": spec["target"], "split": spec["split"], "method": spec["method"],
                                "setting": spec["setting"], "epoch": result.get("epoch", 0),
                                **{k: result[k] for k in ("nested_loo_mse", "loocv_mse", "test_mse")},
                                "acceptance": result.get("acceptance")}) + "\n")

    run_trial({"trial": spec, "on_eval": on_eval}, panel=load_panel(config), job=config.to_dict())


def report(path: Path, overrides: list[str]) -> list[dict]:
    from raygen.cmt.report import PAPER_GASOLINE_ROWS, loo_reference
    from raygen.workloads.cmt import load_panel

    config = load_config(overrides)
    panel = load_panel(config)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for target, split in sorted({(r["target"], r["split"]) for r in records}):
        mine = [r for r in records if (r["target"], r["split"]) == (target, split)]
        cmt = [r for r in mine if r["method"] == "cmt"]
        settings = {json.dumps(r["setting"], sort_keys=True) for r in cmt}
        target_only = [r for r in mine if r["method"] == "target_only"]
        if not cmt or not target_only:
            continue
        reached = min(max(r["epoch"] for r in cmt if json.dumps(r["setting"], sort_keys=True) == s)
                      for s in settings)
        pool = [r for r in cmt if r["epoch"] <= reached]
        ref = loo_reference(panel.rows_of(target), config.krr_form)
        chosen = min(pool, key=lambda r: r["nested_loo_mse"])
        rows.append({"target": target, "split": split, "settings": len(settings), "epoch_reached": reached,
                     "cmt": chosen["test_mse"] / ref, "cmt_setting": chosen["setting"], "cmt_epoch": chosen["epoch"],
                     "cmt_acceptance": chosen["acceptance"], "target_only": target_only[0]["test_mse"] / ref,
                     "cmt_hindsight": min(r["test_mse"] for r in pool) / ref,
                     "paper_target_only": PAPER_GASOLINE_ROWS[target][0], "paper_cmt": PAPER_GASOLINE_ROWS[target][1]})
    print("| target | split | settings x epochs reached | cmt | target-only | cmt, hindsight (peeks) | "
          "paper cmt (10-split mean) | paper target-only |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['split']} | {r['settings']} x {r['epoch_reached']} | {r['cmt']:.2f} "
              f"(epoch {r['cmt_epoch']}, wd {r['cmt_setting']['weight_decay']}, width "
              f"{r['cmt_setting']['classifier_hidden']}, acceptance {r['cmt_acceptance']:.2f}) | "
              f"{r['target_only']:.2f} | {r['cmt_hindsight']:.2f} | {r['paper_cmt']:.2f} | "
              f"{r['paper_target_only']:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", help="TARGET:SPLIT, e.g. U.S.A.:0 (the authors' split numbering)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cmt_paper_slice.jsonl"))
    parser.add_argument("--report", type=Path, help="only print the table from this JSON-lines file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="job override, e.g. epochs=100")
    args = parser.parse_args()
    if args.report:
        report(args.report, args.overrides)
        return
    from raygen.workloads.cmt import plan, preflight

    config = load_config(args.overrides)
    wanted = [(p.rsplit(":", 1)[0], int(p.rsplit(":", 1)[1])) for p in args.pairs]
    targets = sorted({t for t, _ in wanted})
    config = load_config([*args.overrides, f"targets=[{', '.join(targets)}]",
                          f"splits={max(s for _, s in wanted) + 1}"])
    panel, _ = preflight(config)
    # cheap target-only first, then cmt, pair by pair in the order given
    specs = sorted((s for s in plan(config, panel) if (s["target"], s["split"]) in wanted),
                   key=lambda s: (wanted.index((s["target"], s["split"])), s["method"] != "target_only"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    overrides = [*args.overrides, f"targets=[{', '.join(targets)}]", f"splits={max(s for _, s in wanted) + 1}"]
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(one_trial, [{"spec": s, "out": str(args.out), "overrides": overrides} for s in specs]))
    report(args.out, args.overrides)


if __name__ == "__main__":
    main()
