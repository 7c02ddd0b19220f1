"""Per-target figures of a `raygen cmt` Gasoline run beside the paper's, and what the leaky selection would pick.

Reads the run's `config.json` and the per-trial histories Tune left in
`<run>/trials/raygen_trials/*.json` (every evaluation's scores; a run interrupted part-way has
the finished trials only, and the table covers the targets whose every split finished), and
prints per target: cmt and target-only relative MSE (mean over splits; cmt's epoch / setting by
nested leave-one-out, as the report selects), cmt if they were chosen by the fit's own partial
LOOCV instead (it leaks: the augmented points carry the held-out point's components), and the
paper's Table 2 (`raygen.cmt.report.PAPER_GASOLINE_ROWS`). Scores are divided by the target's
leave-one-out reference (`raygen.cmt.report.loo_reference`), as in the report.

    .venv/bin/python benchmarks/cmt_selection.py runs/cmt_gasoline
writes benchmarks/results/cmt_selection.json and prints a markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from raygen.cmt.report import PAPER_GASOLINE_ROWS, loo_reference
from raygen.workloads.cmt import CmtConfig, load_panel


def pick(history: list[dict], score: str) -> float:
    """Test MSE of the evaluation with the lowest `score`."""
    return min(history, key=lambda row: row[score])["test_mse"]


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cmt_gasoline")
    raw = json.loads((run / "config.json").read_text())
    config = CmtConfig.from_dict({k: v for k, v in raw.items() if k != "config_class"})
    panel = load_panel(config)
    picks: dict[tuple[str, int, str], float] = {}  # (target, split, column) -> test MSE, best over settings
    chosen: dict[tuple[str, int, str], float] = {}  # ... and the score it was chosen by
    for path in (run / "trials" / "raygen_trials").glob("*.json"):
        record = json.loads(path.read_text())
        spec, history = record["config"]["trial"], record["history"]
        if not history or spec["method"] not in ("cmt", "target_only"):
            continue
        if spec["method"] == "cmt" and history[-1].get("epoch") != config.epochs:
            continue  # an interrupted trial
        columns = [("cmt", "nested_loo_mse"), ("cmt_leaky_selection", "loocv_mse")] if spec["method"] == "cmt" \
            else [("target_only", "nested_loo_mse")]
        for column, score in columns:
            key = (spec["target"], spec["split"], column)
            best = min(history, key=lambda row: row[score])
            if key not in chosen or best[score] < chosen[key]:
                chosen[key], picks[key] = best[score], best["test_mse"]
    rows = []
    for target in panel.names:
        splits = range(config.splits)
        if not all((target, s, c) in picks for s in splits for c in ("cmt", "cmt_leaky_selection", "target_only")):
            continue
        ref = loo_reference(panel.rows_of(target), config.krr_form)
        row = {"target": target, **{c: float(np.mean([picks[(target, s, c)] / ref for s in splits]))
                                    for c in ("cmt", "target_only", "cmt_leaky_selection")}}
        row["paper_target_only"], row["paper_cmt"] = PAPER_GASOLINE_ROWS.get(target, (float("nan"),) * 2)
        rows.append(row)
    keys = ("cmt", "target_only", "cmt_leaky_selection", "paper_cmt", "paper_target_only")
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    beats = {"run": sum(r["cmt"] < r["target_only"] for r in rows),
             "paper_same_targets": sum(r["paper_cmt"] < r["paper_target_only"] for r in rows)}
    out = Path(__file__).parent / "results" / "cmt_selection.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"run": str(run), "splits": config.splits, "rows": rows, "means": means,
                               "cmt_beats_target_only": beats}, indent=1))
    print(f"{len(rows)} targets x {config.splits} splits")
    print("| target | cmt | target-only | cmt, leaky selection | paper cmt | paper target-only |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")
    print("| **mean** | " + " | ".join(f"{means[k]:.2f}" for k in keys) + " |")
    print(f"cmt beats target-only: {beats['run']} of {len(rows)} (paper on the same targets: "
          f"{beats['paper_same_targets']}); wrote {out}")


if __name__ == "__main__":
    main()
