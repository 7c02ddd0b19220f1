"""The run directory every workload writes: `<storage_path>/<name>/`, on any pyarrow filesystem.

    config.json     the resolved config: always describes the outputs beside it
    metrics.jsonl   one JSON object per logged step (the same scalars go to TensorBoard)
    tb/             TensorBoard event files
    report.json     the run's summary figures      (written last, atomically: a run without
    report.md       the same, for a person          them did not finish)
    ...             workload outputs (samples/, checkpoints, plots)

`storage_path` is a local path or a URI (`s3://bucket/runs?endpoint_override=...`, `gs://...`):
see `raygen.storage`. Workloads write only through this class (`write_text`, `write_bytes`,
`save_figure`, `upload_dir`, ...), never through local `Path`s, so every output lands where the
user pointed. Files that libraries insist on writing locally (TensorBoard) are staged in a local
temp dir and uploaded periodically and at `close`, so a run killed mid-way keeps its latest
metrics.

A run directory never lies. Opening one decides before it writes: a re-run with the same name
resumes only if the settings that determine its results (`Config.provenance()`) equal those in
the existing `config.json`; otherwise it is refused with the differing keys named — unless the
directory holds no outputs yet (a failed start must not poison its name), or the user asked for
`--fresh`, which clears it first.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from raygen import storage
from raygen.config import Config
from raygen.errors import UserError

# Files that exist from the first moment of a run and are not results: a directory holding only
# these may be reused with other settings.
_BOOKKEEPING = {"config.json", "metrics.jsonl", "tb"}
_UPLOAD_EVERY_S = 15.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys if old.get(k) != new.get(k)]


class RunDir:
    """Open (decide, then write config.json) the run directory of `config`."""

    def __init__(self, config: Config):
        self.config = config
        self.uri = config.run_dir
        self.loc = storage.resolve(self.uri)
        storage.check_reachable(self.loc)
        self.fs, self.fs_path = self.loc.fs, self.loc.path
        self._decide()
        text = config.to_json()
        storage.check_no_credentials(text, "the config")  # validated per key already; this file is shared
        try:
            self.write_text("config.json", text)
        except OSError as exc:  # unwritable, a file where a directory should be, a read-only mount
            raise UserError(f"cannot write the run directory {storage.display(self.uri)} "
                            f"({str(exc).strip().splitlines()[0]}); set storage_path to a writable "
                            "directory or bucket") from None
        # A re-run rewrites the report at its end; a stale one must not pass for this run's.
        for name in ("report.json", "report.md"):
            storage.delete(self.loc.child(name))
        self._writer = None
        self._tb_dir: Path | None = None
        self._purge_step: int | None = None
        self._metrics: list[str] | None = None  # remote only: metrics.jsonl held here, uploaded whole
        self._uploaded_at = time.monotonic()

    @staticmethod
    def clear(config: Config) -> None:
        """`--fresh`: remove the run directory so the run starts over."""
        loc = storage.resolve(config.run_dir)
        storage.check_reachable(loc)
        storage.delete(loc)

    def _decide(self) -> None:
        config_file = self.loc.child("config.json")
        if not storage.exists(config_file):
            return
        try:
            saved = json.loads(storage.read_bytes(config_file))
        except ValueError:
            saved = {}
        old = type(self.config).provenance_of(saved)
        new = self.config.provenance()
        changed = _differences(old, new)
        if not changed:
            return
        outputs = [name for name in storage.listdir(self.loc) if name not in _BOOKKEEPING]
        if not outputs:
            for name in _BOOKKEEPING - {"config.json"}:
                storage.delete(self.loc.child(name))
            return
        raise UserError(
            f"run '{self.config.name}' at {storage.display(self.uri)} holds results made with other settings "
            f"({'; '.join(changed)}); re-run with the same settings to resume, pick another name "
            "(--set name=...), or start it over with --fresh"
        )

    # ------------------------------------------------------------------ files

    def child(self, rel: str) -> storage.Location:
        return self.loc.child(rel)

    def child_uri(self, rel: str) -> str:
        """The URI of a file or directory in the run (for reports, and to hand to another run)."""
        return storage.join(self.uri, rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        storage.write_bytes(self.loc.child(rel), data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_text(self, rel: str) -> str:
        return storage.read_bytes(self.loc.child(rel)).decode()

    def exists(self, rel: str) -> bool:
        return storage.exists(self.loc.child(rel))

    def listdir(self, rel: str = "") -> list[str]:
        return storage.listdir(self.loc.child(rel) if rel else self.loc)

    def delete(self, rel: str) -> None:
        storage.delete(self.loc.child(rel))

    def upload_dir(self, local_dir: str | Path, rel: str) -> None:
        """Copy a local directory into the run; it counts as complete only once fully there."""
        storage.upload_dir(local_dir, self.loc.child(rel))

    def is_complete(self, rel: str) -> bool:
        return storage.is_complete(self.loc.child(rel))

    def download_dir(self, rel: str, local_dir: str | Path) -> Path:
        return storage.download_dir(self.loc.child(rel), local_dir)

    def save_figure(self, rel: str, fig, **savefig_kwargs: Any) -> None:
        """Write a matplotlib figure as PNG (rendered in memory: nothing staged on local disk)."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", **{"dpi": fig.dpi, **savefig_kwargs})
        plt.close(fig)
        self.write_bytes(rel, buffer.getvalue())

    @property
    def settings_hash(self) -> str:
        """A hash of the settings that determine this run's results: stored with each result that a
        re-run may reuse (trial records, checkpoints) and checked against it, so reuse does not hang
        on `config.json` alone (a file anyone can edit)."""
        text = json.dumps(self.config.provenance(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def ray_storage(self) -> dict[str, Any]:
        """`tuning.fit(storage=run_dir.ray_storage())`: where Ray Tune writes inside this run dir, and the
        settings hash that gates reuse of its trials."""
        out = {"storage_path": self.fs_path, "settings_hash": self.settings_hash}
        if not self.loc.is_local:
            out["storage_filesystem"] = self.fs
        return out

    # ------------------------------------------------------------------ metrics

    @property
    def tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.loc.is_local:
                tb_dir = str(self.loc.child("tb").path)
            else:
                self._tb_dir = Path(tempfile.mkdtemp(prefix="raygen-tb-"))
                tb_dir = str(self._tb_dir)
            self._writer = SummaryWriter(tb_dir, purge_step=self._purge_step)
        return self._writer

    def truncate_log(self, after_step: int) -> None:
        """Resume: drop metrics logged after `after_step`, so curves continue the original run."""
        rel = "metrics.jsonl"
        lines = self.read_text(rel).splitlines() if self.exists(rel) else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= after_step]
        self.write_text(rel, "".join(line + "\n" for line in kept))
        if self._metrics is not None:
            self._metrics = kept
        self._purge_step = after_step + 1 if after_step > 0 else None

    def log(self, step: int, **scalars: float) -> None:
        line = json.dumps({"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in scalars.items()}})
        if self.loc.is_local:
            with open(self.loc.child("metrics.jsonl").path, "a") as f:
                f.write(line + "\n")
        else:
            if self._metrics is None:
                rel = "metrics.jsonl"
                self._metrics = self.read_text(rel).splitlines() if self.exists(rel) else []
            self._metrics.append(line)
        for key, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(key, value, step)
        if time.monotonic() - self._uploaded_at > _UPLOAD_EVERY_S:
            self.flush()

    def log_images(self, step: int, tag: str, images) -> str:
        """Log a batch of images ([N, C, H, W] in [0, 1]) as one grid: TensorBoard and `<tag>/step_<step>.png`."""
        from raygen.plots import image_grid, png_bytes

        grid = image_grid(images)
        self.tensorboard.add_image(tag, grid, step)
        rel = f"{tag}/step_{step:06d}.png"
        self.write_bytes(rel, png_bytes(grid))
        return rel

    def flush(self) -> None:
        """Push what is staged locally (metrics of a remote run, TensorBoard events) to the run dir."""
        self._uploaded_at = time.monotonic()
        if self._writer is not None:
            self._writer.flush()
        if self.loc.is_local:
            return
        if self._metrics is not None:
            self.write_text("metrics.jsonl", "".join(line + "\n" for line in self._metrics))
        if self._tb_dir is not None:
            for path in sorted(self._tb_dir.iterdir()):
                self.write_bytes(f"tb/{path.name}", path.read_bytes())

    def write_report(self, summary: dict[str, Any], markdown: str) -> None:
        """The run's last write: once the report is there, the run is finished."""
        self.flush()
        report = json.dumps(summary, indent=2, default=_jsonable)
        storage.check_no_credentials(report + markdown, f"the report of run '{self.config.name}'")
        self.write_text("report.json", report)
        self.write_text("report.md", markdown)

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tb_dir is not None:
            shutil.rmtree(self._tb_dir, ignore_errors=True)
            self._tb_dir = None
