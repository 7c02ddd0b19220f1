"""The run directory every workload writes: `<storage_path>/<name>/`.

    config.json     the resolved config
    metrics.jsonl   one JSON object per logged step (the same scalars go to TensorBoard)
    tb/             TensorBoard event files
    report.json     the run's summary figures      (written last, atomically: a run without
    report.md       the same, for a person          them did not finish)
    ...             workload outputs (samples/, checkpoints/, plots)
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from raygen.config import Config


def write_atomic(path: Path, text: str) -> None:
    """Write text so that readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class RunDir:
    def __init__(self, config: Config):
        self.path = Path(config.run_dir).expanduser().absolute()
        self.path.mkdir(parents=True, exist_ok=True)
        config.save(self.path / "config.json")
        # A re-run rewrites the report at its end; a stale one must not pass for this run's.
        for name in ("report.json", "report.md"):
            (self.path / name).unlink(missing_ok=True)
        self._writer = None

    @property
    def tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tb"))
        return self._writer

    def log(self, step: int, **scalars: float) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in scalars.items()}}) + "\n")
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                self.tensorboard.add_scalar(key, value, step)

    def write_report(self, summary: dict[str, Any], markdown: str) -> None:
        write_atomic(self.path / "report.json", json.dumps(summary, indent=2, default=_jsonable))
        write_atomic(self.path / "report.md", markdown)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
