"""What every throughput benchmark here reports the same way: repeats as median and min–max,
the machine (CPU count, load average before and after), and an aligned table.

Imported by the scripts in this folder (run as `python benchmarks/<script>.py`, which puts this
folder on sys.path).
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements (the median is the figure quoted)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def show(s: dict, fmt: str = ".0f", unit: str = "") -> str:
    if len(s["values"]) == 1:
        return f"{s['median']:{fmt}}{unit} (1 run)"
    return f"{s['median']:{fmt}}{unit} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def write(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
