"""Per-target figures of a finished `raygen cmt` Gasoline run beside the paper's, and what the leaky selection would pick.

Reads `<run>/report.json` (the run's own selection: nested leave-one-out) and the per-trial histories
Tune left in `<run>/trials/raygen_trials/*.json` (every evaluation's scores), and prints per target:
cmt and target-only relative MSE (mean over the run's splits), cmt if the epoch and setting were
chosen by the fit's own partial LOOCV instead (it leaks: the augmented points carry the held-out
point's components), and the paper's Table 2 (`raygen.cmt.report.PAPER_GASOLINE_ROWS`).

    .venv/bin/python benchmarks/cmt_selection.py runs/cmt_gasoline
writes benchmarks/results/cmt_selection.json and prints a markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from raygen.cmt.report import PAPER_GASOLINE_ROWS


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cmt_gasoline")
    report = json.loads((run / "report.json").read_text())
    refs = report["references"]
    cells = {r["target"]: r["cells"] for r in report["table"]}
    leaky: dict[tuple[str, int], tuple[float, float]] = {}  # (target, split) -> (partial LOOCV, test MSE) of the pick
    for path in (run / "trials" / "raygen_trials").glob("*.json"):
        record = json.loads(path.read_text())
        spec = record["config"]["trial"]
        if spec["method"] != "cmt":
            continue
        for row in record["history"]:
            key = (spec["target"], spec["split"])
            if key not in leaky or row["loocv_mse"] < leaky[key][0]:
                leaky[key] = (row["loocv_mse"], row["test_mse"])
    rows = []
    for target in sorted(cells):
        leak = [v[1] / refs[target] for k, v in leaky.items() if k[0] == target]
        paper = PAPER_GASOLINE_ROWS.get(target, (float("nan"), float("nan")))
        rows.append({"target": target, "cmt": cells[target]["cmt"][0], "target_only": cells[target]["target_only"][0],
                     "cmt_leaky_selection": float(np.mean(leak)) if leak else float("nan"),
                     "paper_cmt": paper[1], "paper_target_only": paper[0]})
    keys = ("cmt", "target_only", "cmt_leaky_selection", "paper_cmt", "paper_target_only")
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    beats = {"run": sum(r["cmt"] < r["target_only"] for r in rows),
             "paper": sum(r["paper_cmt"] < r["paper_target_only"] for r in rows)}
    out = Path(__file__).parent / "results" / "cmt_selection.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"run": str(run), "splits": report["splits"], "rows": rows, "means": means,
                               "cmt_beats_target_only": beats}, indent=1))
    print("| target | cmt | target-only | cmt, leaky selection | paper cmt | paper target-only |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")
    print("| **mean** | " + " | ".join(f"{means[k]:.2f}" for k in keys) + " |")
    print(f"cmt beats target-only: {beats['run']} of {len(rows)} (paper: {beats['paper']} of 18); wrote {out}")


if __name__ == "__main__":
    main()
