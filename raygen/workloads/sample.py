"""`raygen sample`: parallel sample generation on a Ray Data actor pool, written exactly once.

Pipeline: the N sample ids are cut into fixed chunks of `chunk_size` ids; a Ray Data dataset
with one row per pending chunk feeds `map_batches(SamplerActor, compute=ActorPoolStrategy(...))`;
each actor holds the model, draws its chunk with the chosen sampler and writes
`samples/part-<chunk>.parquet` atomically (temp file + rename). A chunk's file name and content
depend only on the chunk, so a chunk retried after an actor dies rewrites the same file, and a
re-run skips chunks whose file exists: every id 0..N-1 ends up written exactly once. Sample i
is drawn from its own seed `sample_seed(seed, i)`, so the output does not depend on the number
of actors or on the chunk size. Samples stream to Parquet; the driver only sees chunk summaries.

Deviation from a plain `ray.data.range(N)`: rows are chunks, not ids, because Ray Data's batch
boundaries are not stable across retries and file names must be.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from raygen.config import Config, check
from raygen.errors import UserError

MANIFEST = "_manifest.json"
DEFAULT_IMAGE_SIZE = {"tiny": 8, "small": 32}  # for checkpoints whose spec does not record image_size
PREVIEW_POINTS = 4000


@dataclasses.dataclass
class SampleConfig(Config):
    name: str = "sample_mog"
    model: str = "mog4"  # an analytic target (raygen.sampling.TARGETS) or a `raygen train` checkpoint dir
    sampler: Literal["mmdgs", "langevin", "annealed_langevin", "tweedie"] = "mmdgs"
    covariance: Literal["full", "diag", "iso", "none"] = "full"
    probes: int = 4  # Rademacher probes per step for covariance=diag
    sigma_max: float = 3.0
    sigma_min: float = 0.2
    levels: int = 10  # geometric sigma schedule sigma_max -> sigma_min; 1 = single sigma_min (the paper)
    steps_per_level: int = 3
    step_size: float = 0.1  # langevin / annealed_langevin only
    init_scale: float = 0.0  # std of the initial state; 0 = sigma_max
    label: int = -1  # class label for class-conditional models; -1 = cycle through all classes
    guidance: float = 0.0  # classifier-free guidance weight for class-conditional models
    n_samples: int = 20000
    chunk_size: int = 500  # ids per actor call and per Parquet file
    num_actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    dtype: Literal["float32", "float64"] = "float64"
    stats_samples: int = 20000  # samples read back for the report's statistics

    def validate(self) -> None:
        super().validate()
        check(0 < self.sigma_min <= self.sigma_max, "sigma_min", "need 0 < sigma_min <= sigma_max")
        for key in ("levels", "steps_per_level", "probes", "n_samples", "chunk_size", "num_actors", "stats_samples"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.step_size > 0, "step_size", "must be > 0")
        check(self.init_scale >= 0, "init_scale", "must be >= 0")
        check(self.cpus_per_actor > 0, "cpus_per_actor", "must be > 0")
        check(self.gpus_per_actor >= 0, "gpus_per_actor", "must be >= 0")

    def sigmas(self) -> list[float]:
        if self.levels == 1:
            return [self.sigma_min]
        return np.geomspace(self.sigma_max, self.sigma_min, self.levels).tolist()

    def sampler_kwargs(self) -> dict[str, Any]:
        """Only the keyword arguments the chosen sampler takes."""
        if self.sampler == "mmdgs":
            return dict(steps_per_level=self.steps_per_level, covariance=self.covariance, probes=self.probes)
        if self.sampler in ("langevin", "annealed_langevin"):
            return dict(steps_per_level=self.steps_per_level, step_size=self.step_size)
        return dict(steps_per_level=self.steps_per_level)


CONFIG = SampleConfig


def sample_seeds(seed: int, ids: np.ndarray) -> np.ndarray:
    """Per-sample seeds: a splitmix64 hash of (run seed, sample id), in [0, 2**63)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + ids.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)


def resolve_model(model: str):
    """(model, per-sample shape, analytic target or None, number of classes) for a config's `model`."""
    from raygen.sampling import TARGETS

    if model in TARGETS:
        target = TARGETS[model]()
        return target, (target.dim,), target, 0
    path = Path(model).expanduser()
    if path.is_dir():
        from raygen.models import load_denoiser

        denoiser = load_denoiser(path)
        spec = denoiser.spec
        size = spec.get("image_size") or DEFAULT_IMAGE_SIZE[spec["size"]]
        return denoiser, (spec["in_channels"], size, size), None, spec["num_classes"]
    raise UserError(
        f"config key 'model': {model!r} is neither an analytic target ({', '.join(TARGETS)}) "
        "nor a checkpoint directory written by `raygen train`"
    )


def chunk_ids(chunk: int, chunk_size: int, n_samples: int) -> np.ndarray:
    return np.arange(chunk * chunk_size, min((chunk + 1) * chunk_size, n_samples), dtype=np.int64)


def part_path(out_dir: Path, chunk: int) -> Path:
    return out_dir / f"part-{chunk:07d}.parquet"


class SamplerActor:
    """Holds the model; turns a batch of chunk indices into written Parquet parts."""

    def __init__(self, config: dict, out_dir: str, chunk_size: int):
        import torch

        from raygen.sampling import SAMPLERS, initial_state

        torch.set_num_threads(max(1, int(config["cpus_per_actor"])))
        self.config = SampleConfig.from_dict(config)
        self.out_dir = Path(out_dir)
        self.chunk_size = chunk_size
        self.model, self.shape, _, self.num_classes = resolve_model(self.config.model)
        self.sampler = SAMPLERS[self.config.sampler]
        self.initial_state = initial_state
        self.dtype = getattr(torch, self.config.dtype)
        if isinstance(self.model, torch.nn.Module):  # a trained net: compute in the sampler's dtype
            self.model = self.model.to(self.dtype)
        self.metadata = json.dumps(sampler_metadata(self.config, self.shape)).encode()

    def _labels(self, ids: np.ndarray):
        import torch

        if self.num_classes == 0:
            return None
        if self.config.label >= 0:
            return torch.full((len(ids),), self.config.label, dtype=torch.long)
        return torch.as_tensor(ids % self.num_classes)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {"chunk": [], "rows": [], "seconds": [], "psd_repairs": []}
        for chunk in batch["chunk"].tolist():
            start = time.perf_counter()
            ids = chunk_ids(chunk, self.chunk_size, self.config.n_samples)
            seeds = sample_seeds(self.config.seed, ids)
            scale = self.config.init_scale or self.config.sigma_max
            x0 = self.initial_state(seeds.tolist(), self.shape, scale, dtype=self.dtype)
            labels = self._labels(ids)
            model = self.model if labels is None else self.model.conditioned(labels, self.config.guidance)
            x, info = self.sampler(model, x0, self.config.sigmas(), seeds=seeds.tolist(),
                                   **self.config.sampler_kwargs())
            self._write(chunk, ids, seeds, x.detach().cpu().numpy(), labels)
            rows["chunk"].append(chunk)
            rows["rows"].append(len(ids))
            rows["seconds"].append(time.perf_counter() - start)
            rows["psd_repairs"].append(int(info.get("psd_repairs", 0)))
        return {k: np.asarray(v) for k, v in rows.items()}

    def _write(self, chunk: int, ids, seeds, x: np.ndarray, labels) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not np.isfinite(x).all():
            raise UserError(
                f"sampler produced NaN/inf in chunk {chunk} (ids {ids[0]}..{ids[-1]}); lower step_size or "
                "sigma_max, or check the model"
            )
        flat = x.reshape(len(ids), -1)
        columns = {
            "sample_id": pa.array(ids),
            "seed": pa.array(seeds),
            "sample": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
        }
        if labels is not None:
            columns["label"] = pa.array(labels.numpy().astype(np.int64))
        table = pa.table(columns).replace_schema_metadata({"raygen": self.metadata})
        final = part_path(self.out_dir, chunk)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, final)


def sampler_metadata(config: SampleConfig, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "model": config.model, "sampler": config.sampler, "sigmas": config.sigmas(), "shape": list(shape),
        "seed": config.seed, **config.sampler_kwargs(),
    }


def prepare_output(config: SampleConfig, out_dir: Path) -> int:
    """Create the output dir; return the chunk size its parts use (a re-run keeps the first run's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    settings = {"n_samples": config.n_samples, "seed": config.seed, "chunk_size": config.chunk_size,
                "model": config.model, "sampler": config.sampler, "sigmas": config.sigmas(), "label": config.label,
                "guidance": config.guidance, "dtype": config.dtype, "init_scale": config.init_scale,
                **config.sampler_kwargs()}
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        changed = sorted(k for k in settings if k != "chunk_size" and previous.get(k) != settings[k])
        if changed:
            raise UserError(
                f"{out_dir} holds samples drawn with different settings ({', '.join(changed)}); "
                "use a new name or delete that directory"
            )
        return int(previous["chunk_size"])
    manifest_path.write_text(json.dumps(settings, indent=2))
    return config.chunk_size


def written_chunks(out_dir: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in out_dir.glob("part-*.parquet")}


def verify_exactly_once(out_dir: Path, n_samples: int) -> None:
    """Every id 0..N-1 in exactly one row (reads only the sample_id column)."""
    import pyarrow.dataset as pads

    counts = np.zeros(n_samples, dtype=np.int64)
    for batch in pads.dataset(str(out_dir), format="parquet").to_batches(columns=["sample_id"]):
        counts += np.bincount(batch.column(0).to_numpy(), minlength=n_samples)[:n_samples]
    missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
    if missing or repeated:
        raise RuntimeError(f"output {out_dir} is incomplete: {missing} ids missing, {repeated} ids written twice")


def read_samples(out_dir: Path, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The first `limit` samples by id: (ids, samples [n, *shape], labels or None)."""
    import pyarrow.parquet as pq

    ids, xs, labels = [], [], []
    taken = 0
    for part in sorted(out_dir.glob("part-*.parquet")):
        table = pq.read_table(part)
        shape = json.loads(table.schema.metadata[b"raygen"])["shape"]
        n = min(len(table), limit - taken)
        ids.append(table["sample_id"].to_numpy()[:n])
        xs.append(np.stack(table["sample"].to_numpy(zero_copy_only=False)[:n]).reshape(n, *shape))
        if "label" in table.column_names:
            labels.append(table["label"].to_numpy()[:n])
        taken += n
        if taken >= limit:
            break
    return np.concatenate(ids), np.concatenate(xs), (np.concatenate(labels) if labels else None)


def run(config: SampleConfig, *, verbose: bool = False) -> dict[str, Any]:
    import ray

    from raygen.progress import Progress
    from raygen.rundir import RunDir

    run_dir = RunDir(config)
    out_dir = run_dir.path / "samples"
    chunk_size = prepare_output(config, out_dir)
    _, shape, target, _ = resolve_model(config.model)  # fail here, in the driver, on a bad model
    n_chunks = math.ceil(config.n_samples / chunk_size)
    pending = sorted(set(range(n_chunks)) - written_chunks(out_dir))
    resumed = n_chunks - len(pending)
    if resumed:
        print(f"resuming: {resumed}/{n_chunks} chunks already written, drawing {len(pending)} more")

    start = time.perf_counter()
    progress = Progress(config.n_samples, "sampled", every_s=5.0)
    progress.update(config.n_samples - sum(len(chunk_ids(c, chunk_size, config.n_samples)) for c in pending))
    psd_repairs, busy_seconds, first_result_at = 0, 0.0, None
    if pending:
        ds = ray.data.from_items([{"chunk": c} for c in pending], override_num_blocks=min(len(pending), 200))
        ds = ds.map_batches(
            SamplerActor,
            fn_constructor_kwargs={"config": config.to_dict(), "out_dir": str(out_dir), "chunk_size": chunk_size},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=config.num_actors),
            num_cpus=config.cpus_per_actor,
            num_gpus=config.gpus_per_actor,
            batch_format="numpy",
        )
        for row in ds.iter_rows():
            first_result_at = first_result_at or time.perf_counter()
            progress.update(int(row["rows"]))
            psd_repairs += int(row["psd_repairs"])
            busy_seconds += float(row["seconds"])
            run_dir.log(progress.done, samples_per_s=progress.rate(), chunk_seconds=float(row["seconds"]))
    elapsed = time.perf_counter() - start
    verify_exactly_once(out_dir, config.n_samples)

    ids, x, labels = read_samples(out_dir, config.stats_samples)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir.path), "samples_dir": str(out_dir), "n_samples": config.n_samples,
        "parts": n_chunks, "chunks_resumed": resumed, "seconds": elapsed,
        "samples_per_s": (config.n_samples - resumed * chunk_size) / elapsed if pending else None,
        "seconds_to_first_part": (first_result_at - start) if first_result_at else None,
        "actor_busy_seconds": busy_seconds, "psd_repairs": psd_repairs,
        "settings": sampler_metadata(config, shape), "report": str(run_dir.path / "report.md"),
    }
    if target is not None:
        from raygen.sampling import compare_to_truth
        import torch

        summary["stats"] = compare_to_truth(target, torch.as_tensor(x), seed=config.seed)
        summary["truth"] = {k: np.asarray(v).tolist() for k, v in target.truth().items()}
    preview = run_dir.path / "preview.png"
    write_preview(preview, x, labels, target, config)
    summary["preview"] = str(preview)
    run_dir.write_report(summary, report_markdown(summary, config))
    run_dir.close()
    return summary


def write_preview(path: Path, x: np.ndarray, labels, target, config: SampleConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x.ndim == 2:  # points: scatter next to exact samples from the target
        import torch

        n = min(len(x), PREVIEW_POINTS)
        panels = [("raygen " + config.sampler, x[:n])]
        if target is not None:
            exact = target.sample(n, torch.Generator().manual_seed(config.seed)).numpy()
            panels.insert(0, ("exact target", exact))
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
        for ax, (title, pts) in zip(axes[0], panels):
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
            ax.set_title(f"{title} (n={len(pts)})")
            ax.set_aspect("equal")
        lims = np.percentile(np.concatenate([p for _, p in panels]), [0.5, 99.5], axis=0)
        for ax in axes[0]:
            ax.set_xlim(lims[0, 0] - 0.5, lims[1, 0] + 0.5)
            ax.set_ylim(lims[0, 1] - 0.5, lims[1, 1] + 0.5)
    else:  # images [n, C, H, W]: a grid
        n = min(len(x), 64)
        cols = 8
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
        for i, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if i < n:
                img = np.clip(x[i], 0, 1).transpose(1, 2, 0)
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
                if labels is not None:
                    ax.set_title(str(int(labels[i])), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_markdown(summary: dict[str, Any], config: SampleConfig) -> str:
    s = summary["settings"]
    lines = [
        f"# raygen sample: {config.name}",
        "",
        f"- model: `{s['model']}`, sampler: `{s['sampler']}` "
        + ", ".join(f"{k}={v}" for k, v in config.sampler_kwargs().items()),
        f"- sigmas: {', '.join(f'{v:.3g}' for v in s['sigmas'])}",
        f"- samples: {summary['n_samples']} in {summary['parts']} Parquet parts under `{summary['samples_dir']}`"
        + (f" ({summary['chunks_resumed']} parts reused from an earlier run)" if summary["chunks_resumed"] else ""),
        f"- wall time: {summary['seconds']:.1f} s"
        + (f", {summary['samples_per_s']:.0f} samples/s" if summary["samples_per_s"] else ""),
        f"- full-covariance PSD repairs: {summary['psd_repairs']}",
        "",
        "![preview](preview.png)",
    ]
    if "stats" in summary:
        stats, truth = summary["stats"], summary["truth"]
        lines += ["", f"## Statistics of the first {stats['n']} samples against the exact target", "",
                  "| statistic | value |", "|---|---|"]
        for key, value in stats.items():
            shown = ", ".join(f"{v:.4f}" for v in value) if isinstance(value, list) else f"{value:.4g}"
            lines.append(f"| {key} | {shown} |")
        if "weights" in truth:
            lines += ["", "True mode weights: " + ", ".join(f"{w:.2f}" for w in truth["weights"])]
    return "\n".join(lines) + "\n"
