"""`raygen sample`: parallel sample generation on Ray, written exactly once.

Pipeline: the N sample ids are cut into fixed chunks of `chunk_size` ids; each pending chunk is
one Ray task, `num_actors` at once (`raygen.fanout`); each worker process builds the
model once per run (`ChunkSampler`), draws its chunk with the chosen sampler and writes
`samples/part-<chunk>.parquet` atomically through the part store (`raygen.parts`: temp file +
rename locally, one PUT on a bucket). A chunk's file name and content depend only on the chunk,
so a chunk retried after a worker dies rewrites the same file, and a re-run skips chunks whose
part is sound (a damaged part is re-drawn, and said so): every id 0..N-1 ends up written exactly
once, which the driver checks at the end from the parts' footers (O(parts), not O(N)). Sample i
is drawn from its own seed `sample_seed(seed, i)`, so the output does not depend on the number
of workers or on the chunk size. Samples stream to Parquet; the driver only sees chunk summaries.

Chunks are plain Ray tasks on reused worker processes, driven by `raygen.fanout` (which says why
not a Ray Data actor pool); rows are chunks, not ids, because part names must be stable across
retries.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from raygen import device, fanout, parts, runtime, storage
from raygen.config import Config, bounded, check
from raygen.errors import UserError
from raygen.imports import is_import_path, working_dirs
from raygen.seeds import Stream, per_item_seeds, torch_generator
from raygen.threads import torch_threads
from raygen.parts import Chunks, PartStore

PREVIEW_POINTS = 4000
# a chunk costs ~10 ms beyond its sampling (task, part write, driver bookkeeping): under ~50 ms
# of sampling per chunk that is > 20 % (benchmarks/sampler_throughput.py)
MIN_CHUNK_SECONDS = 0.05
# chunk_size=0 aims each chunk's sampling at this, so the fixed cost is ~2 %, and times the
# sampler on growing probe batches until one takes PROBE_SECONDS
CHUNK_SECONDS = 0.5
PROBE_SECONDS = 0.1


@dataclasses.dataclass
class SampleConfig(Config):
    # samples are bit-identical for any actor count, so a resume may change the parallelism
    RESUME_FREE = frozenset({"num_actors", "cpus_per_actor", "gpus_per_actor"})

    name: str = "sample_mog"
    # an analytic target (raygen.sampling.TARGETS), a `raygen train` checkpoint dir, a diffusers model dir,
    # or a torch module by import path pkg.module:factory (raygen.models.external)
    model: str = "mog4"
    sampler: Literal["mmdgs", "langevin", "annealed_langevin", "tweedie"] = "mmdgs"
    covariance: Literal["full", "diag", "iso", "none"] = "full"
    probes: int = bounded(4, ge=1)  # Rademacher probes per step for covariance=diag
    sigma_max: float = bounded(3.0, gt=0)
    sigma_min: float = bounded(0.2, gt=0)
    levels: int = bounded(10, ge=1)  # geometric sigma schedule sigma_max -> sigma_min; 1 = single sigma_min (the paper)
    steps_per_level: int = bounded(3, ge=1)
    step_size: float = bounded(0.1, gt=0)  # langevin / annealed_langevin only
    init_scale: float = bounded(0.0, ge=0)  # std of the initial state; 0 = sigma_max
    label: int = bounded(-1, ge=-1)  # class label for class-conditional models; -1 = cycle through all classes
    guidance: float = 0.0  # classifier-free guidance weight for class-conditional models
    n_samples: int = bounded(20000, ge=1)
    chunk_size: int = bounded(0, ge=0)  # ids per task and per Parquet part; 0 = timed (auto_chunk_size)
    num_actors: int = bounded(2, ge=1)
    cpus_per_actor: float = bounded(1.0, gt=0)
    gpus_per_actor: float = bounded(0.0, ge=0)
    dtype: Literal["float32", "float64"] = "float64"
    stats_samples: int = bounded(20000, ge=1)  # samples read back for the report's statistics

    def validate(self) -> None:
        super().validate()
        check(self.sigma_min <= self.sigma_max, "sigma_min", f"must be <= sigma_max ({self.sigma_max})")

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


def resolve_model(model: str, import_dirs: tuple[str, ...] = ()):
    """(model, per-sample shape, analytic target or None, number of classes) for a config's `model`:
    an analytic target; a `raygen train` checkpoint (local path or URI) sampled at the shape its
    checkpoint records (`sample_shape`); a local diffusers UNet2DModel or pipeline directory; or a
    torch module by import path `pkg.module:factory`, looked for in the working directory and in
    `import_dirs` (the driver's, for a local Ray whose workers started elsewhere), then the installed
    packages (`raygen.models.external` has the protocol)."""
    from raygen.models import external
    from raygen.sampling import TARGETS

    if model in TARGETS:
        target = TARGETS[model]()
        return target, (target.dim,), target, 0
    if is_import_path(model) and not Path(model).exists():
        wrapped = external.load_import_path(model, (*working_dirs(), *import_dirs))
        return wrapped, wrapped.sample_shape, None, wrapped.num_classes
    if storage.is_uri(model) or Path(model).expanduser().is_dir():
        from raygen.models import load_denoiser
        from raygen.models.denoiser import SPEC_FILE

        directory = storage.local_dir_for(model)
        if not (directory / SPEC_FILE).is_file() and external.is_diffusers_dir(directory):
            wrapped = external.load_diffusers(directory, f"model {model!r}")
            return wrapped, wrapped.sample_shape, None, wrapped.num_classes
        denoiser = load_denoiser(directory)
        if denoiser.sample_shape is None:
            raise UserError(f"config key 'model': checkpoint {model!r} does not record the shape it was trained at "
                            "(written before raygen recorded it); add \"sample_shape\": [C, H, W] to its "
                            "denoiser.json, or retrain it")
        return denoiser, denoiser.sample_shape, None, denoiser.num_classes
    if "/" in model or model.startswith("."):
        raise UserError(f"config key 'model': no directory {model!r} (a `raygen train` checkpoint or a diffusers "
                        "model directory); check the path (relative paths start at the working directory)")
    raise UserError(
        f"config key 'model': {model!r} is neither an analytic target ({', '.join(TARGETS)}), a checkpoint "
        "directory written by `raygen train`, a diffusers model directory, nor an import path pkg.module:factory"
    )


def check_model_fits(config: SampleConfig, model) -> None:
    """Refuse settings the model cannot serve, before Ray starts: full covariance without an energy
    (a symmetric Hessian), noise levels outside a VP model's schedule, guidance without a null class."""
    import torch

    from raygen.sampling.curvature import curvature

    if config.sampler == "mmdgs" and config.covariance == "full" and curvature(model).hessian is None:
        raise UserError(f"config key 'covariance': 'full' needs a symmetric Hessian, i.e. a model with an energy; "
                        f"{config.model!r} gives a score only (diffusers and VP models predict noise, whose "
                        "Jacobian is not symmetric); use covariance=diag or iso")
    lo, hi = getattr(model, "sigma_range", (0.0, math.inf))
    for key, value in (("sigma_max", config.sigma_max), ("sigma_min", config.sigma_min)):
        if not lo <= value <= hi:
            raise UserError(f"config key '{key}': {value:g} is outside the noise levels of {config.model!r}'s "
                            f"schedule ({lo:.4g} .. {hi:.4g}); pick sigmas within it")
    if config.guidance and getattr(model, "num_classes", 0):
        model.conditioned(torch.zeros(1, dtype=torch.long), config.guidance)  # refuses what it cannot guide


def check_label(config: SampleConfig, num_classes: int) -> None:
    """`label` must name a class of a class-conditional model, and only then be set."""
    if config.label < 0:
        return
    if num_classes == 0:
        raise UserError(f"config key 'label': model {config.model!r} is not class-conditional; drop label "
                        "(or set label=-1)")
    if config.label >= num_classes:
        raise UserError(f"config key 'label': {config.label} is not a class of {config.model!r} (classes 0.."
                        f"{num_classes - 1}); pick one of those, or -1 for all classes in turn")


class ChunkSampler:
    """A chunk worker (`raygen.fanout`): holds the model, turns a chunk number into its samples' rows."""

    def __init__(self, config: dict, chunk_size: int, resolved: tuple | None = None,
                 import_dirs: tuple[str, ...] = ()):
        import torch

        from raygen.sampling import SAMPLERS, initial_state

        self.config = SampleConfig.from_dict(config)
        self.layout = Chunks(self.config.n_samples, chunk_size)
        # `resolved`: the driver's resolve_model result, so a probe in the driver loads no model again
        self.model, self.shape, _, self.num_classes = resolved or resolve_model(self.config.model, import_dirs)
        self.sampler = SAMPLERS[self.config.sampler]
        self.initial_state = initial_state
        self.dtype = getattr(torch, self.config.dtype)
        # analytic targets are CPU-only (preflight refuses GPUs for them); a net: the sampler's dtype
        self.device = device.device_for("gpus_per_actor", self.config.gpus_per_actor)
        if isinstance(self.model, torch.nn.Module):
            self.model = self.model.to(self.device, self.dtype)

    def _labels(self, ids: np.ndarray):
        import torch

        if self.num_classes == 0:
            return None
        if self.config.label >= 0:
            return torch.full((len(ids),), self.config.label, dtype=torch.long)
        return torch.as_tensor(ids % self.num_classes)

    def draw(self, ids: np.ndarray):
        """(samples, labels or None, sampler info, seeds) for these ids, each from its own seed."""
        seeds = per_item_seeds(self.config.seed, ids)
        scale = self.config.init_scale or self.config.sigma_max
        x0 = self.initial_state(seeds.tolist(), self.shape, scale, dtype=self.dtype, device=self.device)
        labels = self._labels(ids)
        model = self.model if labels is None else self.model.conditioned(labels, self.config.guidance)
        x, info = self.sampler(model, x0, self.config.sigmas(), seeds=seeds.tolist(), **self.config.sampler_kwargs())
        return x, labels, info, seeds

    def __call__(self, chunk: int):
        """(the chunk's rows, {"psd_repairs": n})."""
        import pyarrow as pa
        import torch

        torch.set_num_threads(self.threads)  # a reused worker may have other settings
        ids = self.layout.ids(chunk)
        x, labels, info, seeds = self.draw(ids)
        x = x.detach().cpu().numpy()
        if not np.isfinite(x).all():
            raise UserError(
                f"sampler produced NaN/inf in chunk {chunk} (ids {ids[0]}..{ids[-1]}); lower step_size or "
                "sigma_max, or check the model"
            )
        flat = x.reshape(len(ids), -1)
        columns = {
            parts.ID: pa.array(ids),
            parts.SEED: pa.array(seeds),
            parts.SAMPLE: pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
        }
        if labels is not None:
            columns[parts.LABEL] = pa.array(labels.numpy().astype(np.int64))
        return pa.table(columns), {"psd_repairs": int(info.get("psd_repairs", 0))}

    @property
    def threads(self) -> int:
        return max(1, int(self.config.cpus_per_actor))


def sampler_metadata(config: SampleConfig, shape: tuple[int, ...], data_range=None) -> dict[str, Any]:
    """`data_range`: the model's (lo, hi), where it declares one: the samples are in its data space."""
    return {
        "model": config.model, "sampler": config.sampler, "sigmas": config.sigmas(), "shape": list(shape),
        "seed": config.seed, **config.sampler_kwargs(), **({"data_range": list(data_range)} if data_range else {}),
    }


def sample_settings(config: SampleConfig) -> dict[str, Any]:
    """What the samples depend on: a re-run must match these to reuse the parts (`fanout.settle`)."""
    return {"n_samples": config.n_samples, "seed": config.seed, "model": config.model, "sampler": config.sampler,
            "sigmas": config.sigmas(), "label": config.label, "guidance": config.guidance, "dtype": config.dtype,
            "init_scale": config.init_scale, **config.sampler_kwargs()}


def auto_chunk_size(sampler: ChunkSampler, n_samples: int, workers: int) -> int:
    """chunk_size=0: ids per chunk so that drawing a chunk takes about CHUNK_SECONDS, at most
    n_samples / (4 workers) so every worker still gets several chunks.

    Times `sampler.draw` in this process, with the workers' torch threads, on probe batches of
    1, 4, 16, ... ids until one takes PROBE_SECONDS, and divides by the marginal time per id
    between the last two probes (a batch's fixed cost does not grow with the chunk). For GPU
    workers it runs in a task holding a worker's GPU (`timed_on_worker`)."""
    cap = max(1, math.ceil(n_samples / (4 * workers)))
    timings = [(0, 0.0)]  # (ids, seconds): a lone probe's marginal time is its own
    size = 1
    with torch_threads(sampler.threads):
        while True:
            start = time.perf_counter()
            sampler.draw(np.arange(size))
            timings.append((size, time.perf_counter() - start))
            if timings[-1][1] >= PROBE_SECONDS or size >= cap:
                break
            size = min(4 * size, cap)
    (n1, t1), (n2, t2) = timings[-2:]
    per_id = (t2 - t1) / (n2 - n1) if t2 > t1 else t2 / n2
    return int(min(cap, max(1, round(CHUNK_SECONDS / per_id))))


def timed_on_worker(config: dict, import_dirs: tuple[str, ...], workers: int) -> int:
    """auto_chunk_size on a sampling worker's device (run as a Ray task holding its resources)."""
    return auto_chunk_size(ChunkSampler(config, 1, import_dirs=import_dirs), config["n_samples"], workers)


def read_samples(store: PartStore, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The first `limit` samples by id: (ids, samples [n, *shape], labels or None)."""
    table = store.read_first(limit)
    shape = store.metadata()["shape"]
    x = np.stack(table[parts.SAMPLE].to_numpy(zero_copy_only=False)).reshape(len(table), *shape)
    labels = table[parts.LABEL].to_numpy() if parts.LABEL in table.column_names else None
    return table[parts.ID].to_numpy(), x, labels


def preflight(config: SampleConfig):
    """resolve_model's (model, sample shape, analytic target or None, classes), checked before Ray
    starts or anything is written: a typo must fail fast and must not leave a manifest that refuses
    the corrected re-run."""
    resolved = resolve_model(config.model)
    check_label(config, resolved[3])
    check_model_fits(config, resolved[0])
    if config.chunk_size:
        fanout.check_layout(Chunks(config.n_samples, config.chunk_size), "n_samples / chunk_size")
    if config.gpus_per_actor and resolved[2] is not None:
        raise UserError(f"config key 'gpus_per_actor': the analytic target {config.model!r} computes on the CPU "
                        "(a few dimensions: nothing for a GPU to speed up); set gpus_per_actor=0, or sample a net")
    return resolved


def run(config: SampleConfig, *, verbose: bool = False, checked: tuple | None = None) -> dict[str, Any]:
    """`checked`: preflight(config)'s result when the caller (the CLI) has run it already."""
    from raygen.rundir import RunDir

    resolved = checked or preflight(config)
    model, shape, target, _ = resolved
    driver_dirs = working_dirs()  # read once, at the start: where the workers look for an import-path model
    settings = sampler_metadata(config, shape, getattr(model, "data_range", None))
    runtime.init(verbose=verbose)
    runtime.check_fits({"CPU": config.cpus_per_actor, "GPU": config.gpus_per_actor},
                       "cpus_per_actor/gpus_per_actor")
    where = device.probe("gpus_per_actor", config.cpus_per_actor, config.gpus_per_actor)
    if config.gpus_per_actor:
        print(f"sampling on {config.num_actors} workers × {where} ({config.gpus_per_actor:g} GPU each)")
    run_dir = RunDir(config)
    store = PartStore(run_dir.child("samples"))

    def timed_chunk_size() -> int:
        if config.chunk_size:
            return config.chunk_size
        if config.gpus_per_actor:  # timed where the chunks will run: the driver may have no GPU
            size = device.on_unit(timed_on_worker, config.to_dict(), driver_dirs, config.num_actors,
                                  num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor)
        else:
            size = auto_chunk_size(ChunkSampler(config.to_dict(), 1, resolved), config.n_samples, config.num_actors)
        # refused here, before the manifest records it
        fanout.check_layout(Chunks(config.n_samples, size), f"n_samples with the timed chunk_size {size}")
        print(f"chunk_size: {size} samples per chunk, timed to take ~{CHUNK_SECONDS:g} s (set chunk_size to choose)")
        return size

    # a re-run keeps the first run's chunk size: the part names must not move
    chunk_size = fanout.settle(store, sample_settings(config), decided_once={"chunk_size": timed_chunk_size})[
        "chunk_size"]
    layout = Chunks(config.n_samples, chunk_size)
    done = fanout.run_chunks(fanout.Output(store, layout, {**settings, "device": where}), ChunkSampler,
                             {"config": config.to_dict(), "chunk_size": chunk_size, "import_dirs": driver_dirs},
                             what="sampled",
                             log_rate_as="samples", workers=config.num_actors, run_dir=run_dir,
                             num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor)
    written = layout.count - done.resumed
    if written >= 20 and done.busy_seconds / written < MIN_CHUNK_SECONDS:
        print(f"note: chunks took {1000 * done.busy_seconds / written:.0f} ms each on average, so each chunk's fixed "
              f"cost (a task, a Parquet part) is a large share; chunk_size={chunk_size * 4} would amortise it "
              "(for a new run)")

    ids, x, labels = read_samples(store, config.stats_samples)
    summary: dict[str, Any] = {
        "run_dir": run_dir.loc.uri, "samples_dir": store.loc.uri, "n_samples": config.n_samples,
        "parts": layout.count, "chunk_size": chunk_size, "chunks_resumed": done.resumed, "seconds": done.seconds,
        "samples_per_s": done.rate, "seconds_to_first_part": done.first_part_s,
        "actor_busy_seconds": done.busy_seconds, "psd_repairs": int(done.figures.get("psd_repairs", 0)),
        "settings": settings, "device": where, "report": run_dir.child("report.md").uri,
    }
    if target is not None:
        import torch

        from raygen.sampling import compare_to_truth

        summary["stats"] = compare_to_truth(target, torch.as_tensor(x), generator=torch_generator(config.seed, Stream.PREVIEW))
        summary["truth"] = {k: np.asarray(v).tolist() for k, v in target.truth().items()}
    run_dir.save_figure("preview.png", preview(x, labels, target, config, settings.get("data_range")))
    summary["preview"] = run_dir.child("preview.png").uri
    run_dir.write_report(summary, report_markdown(summary, config))
    run_dir.close()
    return summary


def preview(x: np.ndarray, labels, target, config: SampleConfig, data_range=None):
    """Points: a scatter next to exact samples from the target (if known); images: a labelled grid,
    shown from the model's data range (if it declares one) as [0, 1]."""
    from raygen import plots

    if x.ndim == 2:

        n = min(len(x), PREVIEW_POINTS)
        panels = [("raygen " + config.sampler, x[:n])]
        if target is not None:
            panels.insert(0, ("exact target", target.sample(n, torch_generator(config.seed, Stream.PREVIEW)).numpy()))
        return plots.scatter(panels)
    if data_range:
        lo, hi = data_range
        x = np.clip((x - lo) / (hi - lo), 0, 1)
    return plots.labelled_grids([(f"raygen {config.sampler}: {config.model}", x, labels)], per_panel=64)


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
        f"- device: {summary['device']} (per worker)",
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
