"""`raygen weightgen`: neural-network weight generation by diffusion (p-diff, D2NWG) on Ray.

Stages, each writing under the run directory (re-running reuses what is finished and matches):

    zoo/          model zoo as Parquet parts (`model_id, task_id, seed, step, params, val_acc,
                  test_acc`; arch, parameter layout, base weights and task definitions in the
                  metadata), trained on a Ray Data actor pool, one part per fixed chunk of jobs,
                  exactly once (`raygen.parts`); a job is (task, seed): a p-diff trajectory of K
                  checkpoints or one D2NWG member trained to convergence.
    ae/           parameter autoencoder (`train_autoencoder`, a `train_func` on the shared
                  scaffold `raygen.train_loop`: in this process or on Ray Train workers).
    diffusion/    latent EDM diffusion (+ the DeepSets dataset encoder in tasks mode), EMA
                  (`train_diffusion`, same scaffold).
    generated/    n_generate weight vectors per task as parts like the zoo; sample i is drawn
                  from its own seed (`raygen.seeds.per_item_seeds`), so parts are
                  bit-identical for any actor count.
    report.md/json, accuracy histogram, memorisation and fine-tuning plots.

Parallel units are fixed chunks (jobs for the zoo, ids for generation), so a retried or re-run
chunk rewrites the same part and the result does not depend on how many actors ran it. Members
train single-threaded (`torch.set_num_threads(1)`), so a member is the same bits on any worker.
The zoo is small (hundreds of vectors of ~10^3 floats): each training worker reads it whole
from the parts and draws its own batches from its seeded generator (exact resume).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from raygen.config import Config, check
from raygen.errors import UserError

ZOO_COLUMNS = ("model_id", "task_id", "seed", "step", "params", "val_acc", "test_acc")
NOISE_SIGMAS = (0.001, 0.05, 0.15)  # p-diff's noise-perturbed originals, in normalised space
AE_FILE, DIFF_FILE = "autoencoder.pt", "diffusion.pt"
METADATA_FILE = "_metadata.json"  # "_" files are not parts (raygen.parts ignores them)


@dataclasses.dataclass
class WeightgenConfig(Config):
    RESUME_FREE = frozenset({"num_actors", "train_workers", "max_failures"})

    name: str = "weightgen_pdiff"
    mode: Literal["trajectory", "tasks"] = "trajectory"
    zoo: str = ""  # an existing zoo (parts directory) to use instead of collecting one
    # tasks and zoo
    task_family: Literal["digits", "subset", "permutation", "rotation"] = "digits"
    zoo_tasks: int = 1  # task ids 0..zoo_tasks-1 form the zoo
    heldout_tasks: list[int] = dataclasses.field(default_factory=list)  # task ids kept out of the zoo
    classes_per_task: int = 5  # subset family
    seeds: int = 1  # jobs per task: trajectories (trajectory) or members (tasks)
    width: int = 4  # ConvClassifier width / feature_dim
    feature_dim: int = 16
    param_subset: Literal["all", "head", "last2"] = "head"
    member_init: Literal["seed", "shared"] = "seed"  # tasks: init per member seed, or one shared init
    member_steps: int = 400  # Adam steps of a base model / tasks member
    member_lr: float = 0.01
    member_batch: int = 64
    checkpoints: int = 200  # trajectory: K checkpoints per trajectory
    steps_per_checkpoint: int = 1
    trajectory_lr: float = 0.01  # SGD + momentum, as p-diff
    jobs_per_part: int = 1
    num_actors: int = 2
    # parameter autoencoder
    ae_kind: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = 32
    ae_hidden: int = 256
    ae_steps: int = 1500
    ae_lr: float = 1e-3
    ae_batch: int = 50
    input_noise: float = 0.001
    latent_noise: float = 0.1
    # latent diffusion
    diff_steps: int = 3000
    diff_lr: float = 1e-3
    diff_batch: int = 64
    diff_hidden: int = 256
    diff_depth: int = 3
    ema_decay: float = 0.999
    cond_dim: int = 64
    support_shots: int = 5
    sample_steps: int = 32
    # generation, evaluation
    n_generate: int = 100  # per task
    finetune_steps: int = 200
    finetune_every: int = 10
    finetune_models: int = 3
    finetune_lr: float = 0.003
    # training runtime
    train_workers: int = 0  # 0: AE and diffusion train in this process; N: Ray Train workers
    keep_checkpoints: int = 2
    max_failures: int = 1
    log_every: int = 100

    def validate(self) -> None:
        super().validate()
        for key in ("zoo_tasks", "classes_per_task", "seeds", "width", "feature_dim", "member_steps",
                    "member_batch", "checkpoints", "steps_per_checkpoint", "jobs_per_part", "num_actors",
                    "latent_dim", "ae_hidden", "ae_steps", "ae_batch", "diff_steps", "diff_batch", "diff_hidden",
                    "diff_depth", "cond_dim", "support_shots", "sample_steps", "n_generate", "finetune_every",
                    "finetune_models", "keep_checkpoints", "log_every"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("member_lr", "trajectory_lr", "ae_lr", "diff_lr", "finetune_lr"):
            check(getattr(self, key) > 0, key, "must be > 0")
        check(self.input_noise >= 0 and self.latent_noise >= 0, "input_noise", "noise levels must be >= 0")
        check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        check(self.finetune_steps >= self.finetune_every, "finetune_steps", "must be >= finetune_every")
        check(self.train_workers >= 0, "train_workers", "must be >= 0 (0 = train in this process)")
        check(2 <= self.classes_per_task <= 10, "classes_per_task", "must be in 2..10 (digits has 10 classes)")
        if self.mode == "trajectory":
            check(self.zoo_tasks == 1 and not self.heldout_tasks, "zoo_tasks",
                  "trajectory mode collects one task (zoo_tasks: 1, no heldout_tasks); use mode: tasks")
        check(len(set(self.heldout_tasks)) == len(self.heldout_tasks), "heldout_tasks", "lists a task twice")
        inside = sorted(t for t in self.heldout_tasks if 0 <= t < self.zoo_tasks)
        check(not inside, "heldout_tasks",
              f"task {inside[0] if inside else ''} is also in the zoo (zoo tasks are 0..{self.zoo_tasks - 1}); "
              "hold out ids >= zoo_tasks")
        check(all(t >= 0 for t in self.heldout_tasks), "heldout_tasks", "task ids must be >= 0")

    # ------------------------------------------------------------------ derived settings

    def arch(self, num_classes: int) -> dict[str, int]:
        return dict(in_channels=1, num_classes=num_classes, width=self.width, feature_dim=self.feature_dim)

    @property
    def rows_per_job(self) -> int:
        return self.checkpoints if self.mode == "trajectory" else 1

    @property
    def jobs(self) -> int:
        return self.zoo_tasks * self.seeds

    def job(self, j: int) -> tuple[int, int]:
        """(task id, seed index) of zoo job j."""
        return divmod(j, self.seeds)

    def zoo_settings(self) -> dict[str, Any]:
        """What the zoo's content depends on (its manifest): a re-run with other values is refused."""
        keys = ("mode", "task_family", "zoo_tasks", "classes_per_task", "seeds", "width", "feature_dim",
                "param_subset", "member_init", "member_steps", "member_lr", "member_batch", "checkpoints",
                "steps_per_checkpoint", "trajectory_lr", "jobs_per_part", "seed")
        return {k: getattr(self, k) for k in keys}


CONFIG = WeightgenConfig


# ====================================================================== tasks and data


def task_defs(cfg: WeightgenConfig) -> tuple[dict[int, dict], dict[int, dict]]:
    """(zoo task id -> definition, held-out task id -> definition); a held-out task whose definition
    equals a zoo task's is an error (it would not be held out)."""
    from raygen.weightgen.zoo import make_task

    zoo = {t: make_task(cfg.task_family, t, cfg.seed, cfg.classes_per_task) for t in range(cfg.zoo_tasks)}
    held = {t: make_task(cfg.task_family, t, cfg.seed, cfg.classes_per_task) for t in cfg.heldout_tasks}
    for t, d in held.items():
        same = [z for z, dz in zoo.items() if dz == d]
        if same:
            raise UserError(f"held-out task {t} defines the same task as zoo task {same[0]} ({d}); "
                            "choose other heldout_tasks or a larger task family")
    return zoo, held


def digit_splits() -> dict:
    import torch

    from raygen.data import digits_arrays
    from raygen.weightgen.zoo import split

    images, labels = digits_arrays()
    return split(torch.from_numpy(images), torch.from_numpy(labels))


def zoo_metadata(cfg: WeightgenConfig, layout, base: list[float] | None, tasks: dict[int, dict]) -> dict[str, Any]:
    from raygen.weightgen.zoo import task_classes

    classes = {task_classes(d) for d in tasks.values()}
    return {"mode": cfg.mode, "arch": cfg.arch(classes.pop()), "layout": layout.to_dict(), "base": base,
            "tasks": {str(t): d for t, d in tasks.items()}, "param_subset": cfg.param_subset}


# ====================================================================== stage 1: the zoo


def base_model(cfg: WeightgenConfig, splits: dict, task: dict):
    """Trajectory mode's base: all parameters trained on the task (init and data order from the run seed)."""
    from raygen.weightgen.zoo import task_classes, task_splits, train_member

    train = task_splits(task, splits)["train"]
    return train_member(cfg.arch(task_classes(task)), train, init_seed=cfg.seed, order_seed=cfg.seed + 1,
                        steps=cfg.member_steps, lr=cfg.member_lr, batch_size=cfg.member_batch)


def zoo_layout(cfg: WeightgenConfig, num_classes: int):
    from raygen.weightgen.params import ParamLayout
    from raygen.weightgen.zoo import init_model, subset_names

    model = init_model(cfg.arch(num_classes), 0)
    subset = cfg.param_subset if cfg.mode == "trajectory" else "all"
    return ParamLayout.of(model, subset_names(model, subset))


class ZooActor:
    """Trains the jobs of a chunk (single-threaded) and writes the chunk's part."""

    def __init__(self, config: dict, store_uri: str):
        import torch

        from raygen.parts import Chunks, PartStore
        from raygen.weightgen.params import ParamLayout
        from raygen.weightgen.zoo import build_classifier

        torch.set_num_threads(1)
        self.cfg = WeightgenConfig.from_dict(config)
        self.store = PartStore.at(store_uri, id_column="model_id")
        self.chunks = Chunks(self.cfg.jobs * self.cfg.rows_per_job, self.cfg.rows_per_job * self.cfg.jobs_per_part)
        self.metadata = metadata = read_metadata(self.store)
        self.layout = ParamLayout.from_dict(metadata["layout"])
        self.tasks = {int(t): d for t, d in metadata["tasks"].items()}
        self.splits = digit_splits()
        self.model = build_classifier(metadata["arch"]).eval()
        self.model.load_state_dict(base_from(self.model, metadata))  # trajectory: the base model

    def _job(self, j: int):
        """(thetas [rows, P], steps [rows]) of zoo job j."""

        from raygen.seeds import Stream, stream_seed
        from raygen.weightgen.params import flatten
        from raygen.weightgen.zoo import task_splits, train_member, trajectory

        cfg = self.cfg
        task_id, s = cfg.job(j)
        train = task_splits(self.tasks[task_id], self.splits)["train"]
        order_seed = stream_seed(cfg.seed, Stream.MEMBER_ORDER, task_id, s)
        if cfg.mode == "trajectory":
            thetas = trajectory(self.model, self.layout, train, order_seed=order_seed, checkpoints=cfg.checkpoints,
                                steps_per_checkpoint=cfg.steps_per_checkpoint, lr=cfg.trajectory_lr,
                                batch_size=cfg.member_batch)
            return thetas, (np.arange(cfg.checkpoints) + 1) * cfg.steps_per_checkpoint
        init_seed = cfg.seed if cfg.member_init == "shared" else stream_seed(cfg.seed, Stream.MEMBER_INIT, task_id, s)
        model = train_member(self.metadata["arch"], train, init_seed=init_seed, order_seed=order_seed,
                             steps=cfg.member_steps, lr=cfg.member_lr, batch_size=cfg.member_batch)
        return flatten(dict(model.named_parameters()), self.layout)[None], np.asarray([cfg.member_steps])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from raygen.weightgen.evaluate import accuracies
        from raygen.weightgen.zoo import task_splits

        out = {"chunk": [], "rows": [], "seconds": []}
        for chunk in batch["chunk"].tolist():
            start = time.perf_counter()
            ids = self.chunks.ids(chunk)
            cols: dict[str, list] = {k: [] for k in ZOO_COLUMNS}
            for j in sorted({int(i) // self.cfg.rows_per_job for i in ids}):
                thetas, steps = self._job(j)
                task_id, s = self.cfg.job(j)
                splits = task_splits(self.tasks[task_id], self.splits)
                acc = accuracies(self.model, self.layout, thetas, {"val": splits["val"], "test": splits["test"]})
                cols["model_id"] += list(j * self.cfg.rows_per_job + np.arange(len(thetas)))
                cols["task_id"] += [task_id] * len(thetas)
                cols["seed"] += [s] * len(thetas)
                cols["step"] += steps.tolist()
                cols["params"].append(thetas.to(torch.float32).numpy())
                cols["val_acc"] += acc["val"].tolist()
                cols["test_acc"] += acc["test"].tolist()
            self.store.write(chunk, params_table(cols), self.chunks, self.metadata)
            out["chunk"].append(chunk)
            out["rows"].append(len(ids))
            out["seconds"].append(time.perf_counter() - start)
        return {k: np.asarray(v) for k, v in out.items()}


def params_table(cols: dict[str, list]):
    """A parts table: integer/float columns plus `params` as a fixed-size float32 list."""
    import pyarrow as pa

    flat = np.concatenate(cols["params"]).astype(np.float32)
    arrays = {k: pa.array(np.asarray(v)) for k, v in cols.items() if k != "params"}
    arrays["params"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
    return pa.table({k: arrays[k] for k in cols})


def write_parts(run_dir, store, chunks, pending: list[int], actor, kwargs: dict, what: str, num_actors: int) -> int:
    """Run `actor` over the pending chunks on a Ray Data actor pool; returns rows written."""
    import ray

    from raygen.progress import Progress

    progress = Progress(chunks.n, what, every_s=5.0)
    progress.update(chunks.n - chunks.rows_in(pending))
    if not pending:
        return 0
    ds = ray.data.from_items([{"chunk": c} for c in pending], override_num_blocks=min(len(pending), 200))
    ds = ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=1, batch_format="numpy")
    for row in ds.iter_rows():
        progress.update(int(row["rows"]))
        run_dir.log(progress.done, **{f"{what}_per_s": progress.rate(), "chunk_seconds": float(row["seconds"])})
    store.verify(chunks)
    return chunks.rows_in(pending)


def write_metadata(store, metadata: dict[str, Any]) -> None:
    """The parts' metadata as a side file too: actors read it there (large constructor arguments
    would go through the object store)."""
    from raygen import storage

    storage.write_bytes(store.loc.child(METADATA_FILE), json.dumps(metadata).encode())


def read_metadata(store) -> dict[str, Any]:
    from raygen import storage

    return json.loads(storage.read_bytes(store.loc.child(METADATA_FILE)))


def _manifest(store, settings: dict[str, Any]) -> None:
    previous = store.read_manifest()
    if previous is not None and previous != settings:
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        raise UserError(f"{store.uri} holds parts made with other settings ({', '.join(changed)}); "
                        "use a new name or --fresh")
    if previous is None:
        store.write_manifest(settings)


def collect_zoo(cfg: WeightgenConfig, run_dir, zoo_tasks: dict[int, dict]) -> dict[str, Any]:
    """Stage 1: the zoo's parts (only missing/damaged chunks are trained)."""
    import torch

    from raygen.parts import Chunks, PartStore
    from raygen.weightgen.params import ParamLayout, flatten
    from raygen.weightgen.zoo import task_classes

    store = PartStore(run_dir.child("zoo"), id_column="model_id")
    chunks = Chunks(cfg.jobs * cfg.rows_per_job, cfg.rows_per_job * cfg.jobs_per_part)
    _manifest(store, cfg.zoo_settings())
    pending = store.scan(chunks).pending
    base = None
    if cfg.mode == "trajectory":
        with torch.random.fork_rng():
            torch.set_num_threads(1)
            model = base_model(cfg, digit_splits(), zoo_tasks[0])
        base = flatten(dict(model.named_parameters()), ParamLayout.of(model)).tolist()
    layout = zoo_layout(cfg, task_classes(zoo_tasks[0]))
    metadata = zoo_metadata(cfg, layout, base, zoo_tasks)
    start = time.perf_counter()
    print(f"[1/4] zoo: {cfg.jobs} job(s) x {cfg.rows_per_job} checkpoint(s), {layout.numel} parameters each, "
          f"{len(pending)}/{chunks.count} parts to write on {cfg.num_actors} actors")
    write_metadata(store, metadata)
    written = write_parts(run_dir, store, chunks, pending, ZooActor,
                          {"config": cfg.to_dict(), "store_uri": store.loc.uri}, "zoo members", cfg.num_actors)
    return {"uri": store.loc.uri, "members": chunks.n, "parts": chunks.count, "written": written,
            "seconds": time.perf_counter() - start}


def read_zoo(uri: str, what: str = "zoo") -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """(params [N, P] float32 tensor, other columns by name, metadata) of a zoo / generated store,
    rows in id order. Refuses an empty store and one whose parts disagree on architecture or layout."""
    import pyarrow.parquet as pq
    import torch

    from raygen.parts import METADATA_KEY, PartStore

    store = PartStore.at(uri, id_column="model_id")
    paths = store.part_paths()
    if not paths:
        raise UserError(f"the {what} at {store.uri} is empty (no part-*.parquet files); collect it first "
                        "or point `zoo` at a directory of zoo parts")
    metas = []
    for path in paths:
        with store.loc.fs.open_input_file(path) as f:
            raw = (pq.read_schema(f).metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise UserError(f"{path} has no raygen metadata; it is not a raygen {what} part")
        metas.append(json.loads(raw))
    for path, m in zip(paths, metas):
        if (m["arch"], m["layout"]) != (metas[0]["arch"], metas[0]["layout"]):
            raise UserError(f"the {what} at {store.uri} mixes architectures: {Path(path).name} has arch "
                            f"{m['arch']} / {len(m['layout']['names'])} tensors, the first part {metas[0]['arch']} / "
                            f"{len(metas[0]['layout']['names'])}; keep one architecture per zoo")
    table = store.dataset().to_table().sort_by("model_id")
    params = np.stack(table.column("params").to_numpy(zero_copy_only=False)).astype(np.float32)
    cols = {k: table.column(k).to_numpy() for k in table.column_names if k != "params"}
    return torch.from_numpy(params), cols, metas[0]


# ====================================================================== stages 2-3: training


@dataclasses.dataclass
class StageConfig(Config):
    """One training stage (`ae` or `diffusion`) of a weightgen run; built from the run's config."""

    stage: Literal["ae", "diffusion"] = "ae"
    zoo: str = ""  # URI of the zoo parts
    autoencoder: str = ""  # diffusion: URI of the AE checkpoint directory
    mode: Literal["trajectory", "tasks"] = "trajectory"
    support_shots: int = 5
    ae_kind: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = 32
    hidden: int = 256
    depth: int = 3
    cond_dim: int = 64
    input_noise: float = 0.001
    latent_noise: float = 0.1
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 64
    ema_decay: float = 0.999
    log_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_workers: int = 0
    max_failures: int = 1

    def validate(self) -> None:
        super().validate()
        check(bool(self.zoo), "zoo", "must name the zoo's parts directory")
        check(self.batch_size % max(self.num_workers, 1) == 0, "batch_size",
              f"must be divisible by num_workers={self.num_workers}")


def stage_config(cfg: WeightgenConfig, stage: str, root: str, zoo: str, autoencoder: str = "") -> StageConfig:
    common = dict(storage_path=root, seed=cfg.seed, zoo=zoo, mode=cfg.mode, keep_checkpoints=cfg.keep_checkpoints,
                  num_workers=cfg.train_workers, max_failures=cfg.max_failures, log_every=cfg.log_every)
    if stage == "ae":
        return StageConfig(name="ae", stage="ae", ae_kind=cfg.ae_kind, latent_dim=cfg.latent_dim,
                           hidden=cfg.ae_hidden, input_noise=cfg.input_noise, latent_noise=cfg.latent_noise,
                           steps=cfg.ae_steps, lr=cfg.ae_lr, batch_size=cfg.ae_batch,
                           checkpoint_every=max(1, cfg.ae_steps // 3), **common)
    return StageConfig(name="diffusion", stage="diffusion", autoencoder=autoencoder, hidden=cfg.diff_hidden,
                       depth=cfg.diff_depth, cond_dim=cfg.cond_dim, support_shots=cfg.support_shots,
                       steps=cfg.diff_steps, lr=cfg.diff_lr, batch_size=cfg.diff_batch, ema_decay=cfg.ema_decay,
                       checkpoint_every=max(1, cfg.diff_steps // 3), **common)


def _random_rows(state, tensors: tuple, batch_size: int):
    """Endless batches of random rows drawn from the state's generator (restored on resume)."""
    import torch

    while True:
        idx = torch.randint(len(tensors[0]), (batch_size,), generator=state.generator)
        yield tuple(t[idx] for t in tensors)


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    torch.save(obj, path)


def load_checkpoint_file(checkpoint_uri: str, filename: str) -> dict[str, Any]:
    import torch

    from raygen import storage

    data = storage.read_bytes(storage.resolve(checkpoint_uri).child(filename))
    return torch.load(io.BytesIO(data), weights_only=False)


def _one_thread(fn):
    """The AE, the latent denoiser and the zoo CNNs are tiny: one torch thread per process is fastest,
    and on a loaded machine extra threads only contend (measured ~10x slower with 2 threads)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapped


@_one_thread
def train_autoencoder(config: dict) -> dict:
    """p-diff's parameter autoencoder on the per-tensor-normalised zoo (a Ray Train `train_func`)."""
    import torch

    from raygen.seeds import Stream, torch_generator
    from raygen.train_loop import Schedule, TrainRun, TrainState, fit, seeded
    from raygen.weightgen.autoencoder import ParamAutoencoder
    from raygen.weightgen.normalize import TensorNorm
    from raygen.weightgen.params import ParamLayout

    cfg = StageConfig.from_dict(config)
    thetas, _, meta = read_zoo(cfg.zoo)
    layout = ParamLayout.from_dict(meta["layout"])
    norm = TensorNorm.fit(thetas, layout)
    x = norm.normalize(thetas.double()).float()
    run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints)
    try:
        restored = run.store.load(run.rank)
        ae = seeded(cfg.seed, lambda: ParamAutoencoder(layout.numel, cfg.latent_dim, cfg.ae_kind, cfg.hidden,
                                                       input_noise=cfg.input_noise, latent_noise=cfg.latent_noise))
        state = TrainState(modules={"ae": ae}, optimizers={"opt": torch.optim.AdamW(ae.parameters(), lr=cfg.lr)},
                           generator=torch_generator(cfg.seed, Stream.AE_INIT, run.rank))
        if restored is not None:
            state.load_state_dict(restored)
        run.prepare(state)

        def step(state, batch, _step):
            loss = state.modules["ae"](batch[0], state.generator)
            run.accelerator.backward(loss)
            state.optimizers["opt"].step()
            state.optimizers["opt"].zero_grad(set_to_none=True)
            return {"loss": loss.detach()}

        def export(state, directory: Path) -> None:
            module = state.module("ae")
            _save_torch({"spec": module.spec, "weights": module.state_dict(), "norm": norm.to_dict(),
                         "meta": meta}, directory / AE_FILE)

        schedule = Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every)
        return fit(run, state, _random_rows(state, (x,), cfg.batch_size // run.world), step, schedule,
                   export=export, progress={"ae loss": "loss"},
                   diverged_hint=f"lower ae_lr (now {cfg.lr})")
    finally:
        run.close()


def load_autoencoder(checkpoint_uri: str):
    """(autoencoder in eval mode, TensorNorm, zoo metadata) from an `ae` checkpoint."""
    from raygen.weightgen.autoencoder import ParamAutoencoder
    from raygen.weightgen.normalize import TensorNorm

    saved = load_checkpoint_file(checkpoint_uri, AE_FILE)
    ae = ParamAutoencoder(**saved["spec"])
    ae.load_state_dict(saved["weights"])
    return ae.eval(), TensorNorm.from_dict(saved["norm"]), saved["meta"]


def task_supports(meta: dict, task_ids: list[int], shots: int, splits: dict | None = None):
    """Support sets [T, C, shots, F] of the given tasks (their training images, label order)."""
    import torch

    from raygen.weightgen.zoo import support_set, task_classes, task_splits

    splits = splits or digit_splits()
    out = []
    for t in task_ids:
        task = meta["tasks"][str(t)]
        out.append(support_set(*task_splits(task, splits)["train"], task_classes(task), shots))
    return torch.stack(out)


def encode_zoo(ae, norm, thetas):
    import torch

    with torch.no_grad():
        return ae.encode(norm.normalize(thetas.double()).float())


@_one_thread
def train_diffusion(config: dict) -> dict:
    """Latent EDM diffusion over the AE's latents of the zoo; in tasks mode conditioned on the
    DeepSets embedding of each member's task support set, trained jointly (a Ray Train `train_func`)."""
    import torch

    from raygen.diffusion.ema import EMA
    from raygen.diffusion.losses import DenoisingLoss
    from raygen.seeds import Stream, torch_generator
    from raygen.train_loop import Schedule, TrainRun, TrainState, fit, seeded
    from raygen.weightgen.latent import VectorDenoiser, latent_loss
    from raygen.weightgen.set_encoder import SetEncoder

    cfg = StageConfig.from_dict(config)
    ae, norm, meta = load_autoencoder(cfg.autoencoder)
    thetas, cols, zoo_meta = read_zoo(cfg.zoo)
    norm.layout.check_matches(type(norm.layout).from_dict(zoo_meta["layout"]), f"zoo {cfg.zoo}")
    h = encode_zoo(ae, norm, thetas)
    conditional = cfg.mode == "tasks"
    task_ids = sorted(set(cols["task_id"].tolist()))
    task_index = torch.as_tensor(np.searchsorted(task_ids, cols["task_id"]))
    support = task_supports(zoo_meta, task_ids, cfg.support_shots) if conditional else None
    mu, sd = float(h.mean()), float(h.std())
    run = TrainRun(cfg, keep_checkpoints=cfg.keep_checkpoints)
    try:
        restored = run.store.load(run.rank)
        denoiser = seeded(cfg.seed, lambda: VectorDenoiser(h.shape[1], cfg.cond_dim if conditional else 0,
                                                           cfg.hidden, cfg.depth, sigma_data=sd, data_mean=mu))
        modules = {"denoiser": denoiser}
        if conditional:
            modules["encoder"] = seeded(cfg.seed + 1, lambda: SetEncoder(support.shape[-1], support.shape[1],
                                                                         cond_dim=cfg.cond_dim))
        params = [p for m in modules.values() for p in m.parameters()]
        state = TrainState(modules=modules, optimizers={"opt": torch.optim.AdamW(params, lr=cfg.lr)},
                           emas={k: EMA(m, cfg.ema_decay) for k, m in modules.items()},
                           generator=torch_generator(cfg.seed, Stream.LATENT_INIT, run.rank))
        if restored is not None:
            state.load_state_dict(restored)
        run.prepare(state)
        loss_fn = DenoisingLoss(sigma_data=sd)

        def step(state, batch, _step):
            h0, t = batch
            cond = state.modules["encoder"](support[t.cpu()].to(h0.device)) if conditional else None
            loss = latent_loss(loss_fn, state.modules["denoiser"], h0, cond, state.generator)
            run.accelerator.backward(loss)
            state.optimizers["opt"].step()
            state.optimizers["opt"].zero_grad(set_to_none=True)
            for k, ema in state.emas.items():
                ema.update(state.module(k))
            return {"loss": loss.detach()}

        def export(state, directory: Path) -> None:
            _save_torch({k: {"spec": e.model.spec, "weights": e.model.state_dict()} for k, e in state.emas.items()},
                        directory / DIFF_FILE)

        schedule = Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every)
        return fit(run, state, _random_rows(state, (h, task_index), cfg.batch_size // run.world), step, schedule,
                   export=export, progress={"diffusion loss": "loss"},
                   diverged_hint=f"lower diff_lr (now {cfg.lr})")
    finally:
        run.close()


def load_diffusion(checkpoint_uri: str):
    """(EMA VectorDenoiser, EMA SetEncoder or None), eval mode."""
    from raygen.weightgen.latent import VectorDenoiser
    from raygen.weightgen.set_encoder import SetEncoder

    saved = load_checkpoint_file(checkpoint_uri, DIFF_FILE)
    denoiser = VectorDenoiser(**saved["denoiser"]["spec"])
    denoiser.load_state_dict(saved["denoiser"]["weights"])
    encoder = None
    if "encoder" in saved:
        encoder = SetEncoder(**saved["encoder"]["spec"])
        encoder.load_state_dict(saved["encoder"]["weights"])
        encoder.eval()
    return denoiser.eval(), encoder


def _train_stage(stage: StageConfig, train_func, verbose: bool) -> str:
    """Run a stage in this process or on Ray Train; returns the URI of its final checkpoint."""
    from raygen.rundir import RunDir
    from raygen.train_loop import checkpoint_name, launch

    run_dir = RunDir(stage)
    done = checkpoint_name(stage.steps)
    if run_dir.exists("report.json") and run_dir.is_complete(done):
        print(f"       {stage.stage}: finished already, reusing {run_dir.child_uri(done)}")
        return run_dir.child_uri(done)
    metrics, latest = launch(train_func, stage, run_dir, num_workers=stage.num_workers,
                             keep_checkpoints=stage.keep_checkpoints, max_failures=stage.max_failures,
                             verbose=verbose)
    if latest is None:
        raise UserError(f"{stage.stage} training under {run_dir.uri} wrote no checkpoint; see its metrics.jsonl")
    run_dir.write_report({"stage": stage.stage, "checkpoint": run_dir.child_uri(latest), "final": metrics},
                         f"# weightgen {stage.stage} stage\n\nfinal metrics: {json.dumps(metrics)}\n")
    run_dir.close()
    return run_dir.child_uri(latest)


# ====================================================================== stage 4: generation


class GenerateActor:
    """Draws the generated ids of a chunk (per-sample seeds), decodes, evaluates and writes the part."""

    def __init__(self, config: dict, store_uri: str, ae_uri: str, diff_uri: str, task_ids: list[int]):
        import torch

        from raygen.parts import Chunks, PartStore
        from raygen.weightgen.zoo import build_classifier

        torch.set_num_threads(1)
        self.cfg = WeightgenConfig.from_dict(config)
        self.task_ids = task_ids
        self.chunks = Chunks(len(task_ids) * self.cfg.n_generate, self.cfg.n_generate)
        self.store = PartStore.at(store_uri, id_column="model_id")
        self.ae, self.norm, _ = load_autoencoder(ae_uri)
        self.denoiser, self.encoder = load_diffusion(diff_uri)
        self.metadata = read_metadata(self.store)
        self.model = build_classifier(self.metadata["arch"]).eval()
        self.base = base_from(self.model, self.metadata)
        self.splits = digit_splits()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from raygen.weightgen.evaluate import accuracies
        from raygen.weightgen.latent import sample_latents
        from raygen.weightgen.zoo import task_splits
        from raygen.seeds import per_item_seeds

        out = {"chunk": [], "rows": [], "seconds": []}
        for chunk in batch["chunk"].tolist():
            start = time.perf_counter()
            ids = self.chunks.ids(chunk)
            task_id = self.task_ids[chunk]  # one chunk per task
            seeds = per_item_seeds(self.cfg.seed, ids)
            cond = None
            with torch.no_grad():
                if self.encoder is not None:
                    support = task_supports(self.metadata, [task_id], self.cfg.support_shots, self.splits)
                    cond = self.encoder(support).expand(len(ids), -1)
                h = sample_latents(self.denoiser, self.denoiser.spec["dim"], seeds.tolist(), cond,
                                   data_mean=self.denoiser.data_mean, num_steps=self.cfg.sample_steps)
                thetas = self.norm.denormalize(self.ae.decode(h).double()).float()
            if not torch.isfinite(thetas).all():
                raise UserError(f"generation produced NaN/inf for task {task_id}; retrain with lower diff_lr")
            splits = task_splits(self.metadata["tasks"][str(task_id)], self.splits)
            acc = accuracies(self.model, self.norm.layout, thetas, {"val": splits["val"], "test": splits["test"]},
                             self.base)
            cols = {"model_id": ids.tolist(), "task_id": [task_id] * len(ids), "seed": seeds.tolist(),
                    "step": [0] * len(ids), "params": [thetas.numpy()], "val_acc": acc["val"].tolist(),
                    "test_acc": acc["test"].tolist()}
            self.store.write(chunk, params_table(cols), self.chunks, self.metadata)
            out["chunk"].append(chunk)
            out["rows"].append(len(ids))
            out["seconds"].append(time.perf_counter() - start)
        return {k: np.asarray(v) for k, v in out.items()}


def base_from(model, metadata: dict) -> dict:
    """The fixed part of a functional call: the zoo's base weights (trajectory) or the model's own."""
    import torch

    from raygen.weightgen.params import ParamLayout, base_state, unflatten

    base = base_state(model)
    if metadata.get("base") is not None:
        base.update(unflatten(torch.tensor(metadata["base"], dtype=torch.float32), ParamLayout.of(model)))
    return base


def generate(cfg: WeightgenConfig, run_dir, ae_uri: str, diff_uri: str, metadata: dict,
             task_ids: list[int]) -> dict[str, Any]:
    from raygen.parts import Chunks, PartStore

    store = PartStore(run_dir.child("generated"), id_column="model_id")
    chunks = Chunks(len(task_ids) * cfg.n_generate, cfg.n_generate)
    _manifest(store, {"n_generate": cfg.n_generate, "tasks": task_ids, "sample_steps": cfg.sample_steps,
                      "ae": ae_uri, "diffusion": diff_uri, "seed": cfg.seed})
    pending = store.scan(chunks).pending
    write_metadata(store, metadata)
    start = time.perf_counter()
    print(f"[4/4] generating {cfg.n_generate} weight vectors for each of {len(task_ids)} task(s) "
          f"on {cfg.num_actors} actors")
    written = write_parts(run_dir, store, chunks, pending, GenerateActor,
                          {"config": cfg.to_dict(), "store_uri": store.loc.uri, "ae_uri": ae_uri,
                           "diff_uri": diff_uri, "task_ids": task_ids},
                          "generated", cfg.num_actors)
    return {"uri": store.loc.uri, "models": chunks.n, "written": written, "seconds": time.perf_counter() - start}


# ====================================================================== report


def _noise_perturbed(thetas, norm, sigma: float, seed: int):
    """Originals perturbed by N(0, sigma^2) in normalised space (p-diff's baseline)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    z = norm.normalize(thetas.double())
    return norm.denormalize(z + sigma * torch.randn(z.shape, generator=g, dtype=z.dtype)).float()


def _random_init(cfg: WeightgenConfig, layout, arch: dict, n: int):
    import torch

    from raygen.seeds import Stream, stream_seed
    from raygen.weightgen.params import flatten
    from raygen.weightgen.zoo import init_model

    return torch.stack([flatten(dict(init_model(arch, stream_seed(cfg.seed, Stream.RANDOM_INIT, i)).named_parameters()), layout)
                        for i in range(n)])


@_one_thread
def zoo_tables(cfg: WeightgenConfig, thetas, cols, gen, gcols, meta, norm) -> tuple[dict, dict]:
    """p-diff's table on the zoo tasks and the memorisation figures (per task, then pooled)."""
    from raygen.weightgen.evaluate import accuracies, accuracy_summary, memorisation
    from raygen.weightgen.params import ParamLayout, batched_predictions
    from raygen.weightgen.zoo import build_classifier, task_splits

    splits = digit_splits()
    layout = ParamLayout.from_dict(meta["layout"])
    model = build_classifier(meta["arch"]).eval()
    base = base_from(model, meta)
    rows: dict[str, list] = {"original": [], "generated": [], "random": [], **{f"noise_{s}": [] for s in NOISE_SIGMAS}}
    mem: dict[str, list] = {}
    for t in sorted(set(cols["task_id"].tolist())):
        test = task_splits(meta["tasks"][str(t)], splits)["test"]
        orig, g = thetas[cols["task_id"] == t], gen[gcols["task_id"] == t]
        rows["original"].append(cols["test_acc"][cols["task_id"] == t])
        rows["generated"].append(gcols["test_acc"][gcols["task_id"] == t])
        for s in NOISE_SIGMAS:
            noisy = _noise_perturbed(orig, norm, s, cfg.seed + t)
            rows[f"noise_{s}"].append(accuracies(model, layout, noisy, {"test": test}, base)["test"])
        rand = _random_init(cfg, layout, meta["arch"], min(len(orig), 50))
        rows["random"].append(accuracies(model, layout, rand, {"test": test}, base)["test"])
        pred_o = batched_predictions(model, base, layout, orig, test[0])
        pred_g = batched_predictions(model, base, layout, g, test[0])
        if len(orig) >= 2:
            for k, v in memorisation(g, orig, pred_g, pred_o, test[1]).items():
                mem.setdefault(k, []).append(v)
    table = {k: accuracy_summary(np.concatenate(v)) for k, v in rows.items()}
    memo = {k: float(np.mean(np.concatenate(v))) for k, v in mem.items()}
    memo["raw"] = {k: np.concatenate(v) for k, v in mem.items()}
    return table, memo


@_one_thread
def heldout_tables(cfg: WeightgenConfig, thetas, cols, gen, gcols, meta) -> dict[str, Any]:
    """Zero-shot accuracy on held-out tasks and fine-tuning curves from generated / random /
    other-task init (the first `finetune_models` of each), averaged per arm."""
    from raygen.weightgen.evaluate import accuracies, finetune_curve, steps_to_fraction
    from raygen.weightgen.params import ParamLayout
    from raygen.weightgen.zoo import build_classifier, task_classes, task_splits

    splits = digit_splits()
    layout = ParamLayout.from_dict(meta["layout"])
    model = build_classifier(meta["arch"]).eval()
    n = cfg.finetune_models
    zero_shot, other_zero_shot, curves = [], [], {"generated": [], "random": [], "other_task": []}
    chance = []
    rand = _random_init(cfg, layout, meta["arch"], n)
    for t in cfg.heldout_tasks:
        task = meta["tasks"][str(t)]
        sp = task_splits(task, splits)
        chance.append(1.0 / task_classes(task))
        g = gen[gcols["task_id"] == t]
        zero_shot.append(gcols["test_acc"][gcols["task_id"] == t])
        other_zero_shot.append(accuracies(model, layout, thetas, {"test": sp["test"]})["test"])
        inits = {"generated": g[:n], "random": rand, "other_task": thetas[:: max(1, len(thetas) // n)][:n]}
        for arm, vecs in inits.items():
            for i, v in enumerate(vecs):
                curves[arm].append(finetune_curve(model, layout, v, sp["train"], sp["test"],
                                                  steps=cfg.finetune_steps, every=cfg.finetune_every,
                                                  lr=cfg.finetune_lr, batch_size=cfg.member_batch, seed=cfg.seed + i))
    mean_curves = {arm: np.mean(c, 0) for arm, c in curves.items()}
    return {
        "tasks": cfg.heldout_tasks,
        "chance": float(100 * np.mean(chance)),
        "generated": {"zero_shot_mean": float(100 * np.concatenate(zero_shot).mean()),
                      "zero_shot_max": float(100 * np.concatenate(zero_shot).max())},
        "other_task_zoo": {"zero_shot_mean": float(100 * np.concatenate(other_zero_shot).mean())},
        "steps_to_90": {arm: steps_to_fraction(c, cfg.finetune_every) for arm, c in mean_curves.items()},
        "final_acc": {arm: float(100 * c[-1]) for arm, c in mean_curves.items()},
        "curves": {arm: (100 * c).tolist() for arm, c in mean_curves.items()},
        "curve_steps": list(range(0, cfg.finetune_steps + 1, cfg.finetune_every)),
    }


def _plots(run_dir, cols, gcols, memo: dict | None, held: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    zoo_tasks = np.isin(gcols["task_id"], np.unique(cols["task_id"]))
    both = 100 * np.concatenate([cols["test_acc"], gcols["test_acc"][zoo_tasks]])
    bins = np.linspace(both.min(), both.max() + 1e-9, 31)  # shared bins: the bars are comparable
    ax.hist(100 * cols["test_acc"], bins=bins, alpha=0.6, label="original")
    ax.hist(100 * gcols["test_acc"][zoo_tasks], bins=bins, alpha=0.6, label="generated")
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("models")
    ax.legend()
    run_dir.save_figure("accuracy_hist.png", fig)
    names.append("accuracy_hist.png")
    if memo:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(memo["raw"]["orig_nearest_dist"], memo["raw"]["orig_nearest_iou"], s=8, label="original vs nearest original")
        ax.scatter(memo["raw"]["gen_nearest_dist"], memo["raw"]["gen_nearest_iou"], s=8, label="generated vs nearest original")
        ax.set_xlabel("distance to nearest original (weight space)")
        ax.set_ylabel("IoU of wrongly predicted test images")
        ax.legend()
        run_dir.save_figure("memorisation.png", fig)
        names.append("memorisation.png")
    if held:
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm, c in held["curves"].items():
            ax.plot(held["curve_steps"], c, label=f"{arm} init")
        ax.axhline(held["chance"], color="gray", ls=":", label="chance")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        run_dir.save_figure("finetune.png", fig)
        names.append("finetune.png")
    return names


def _markdown(cfg: WeightgenConfig, summary: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# raygen weightgen: {cfg.name} ({cfg.mode} mode, {cfg.task_family} tasks)", "",
             f"Zoo: {summary['zoo']['members']} members ({summary['zoo']['parameters']} generated parameters each) "
             f"from {cfg.zoo_tasks} task(s) x {cfg.seeds} seed(s); generated: {cfg.n_generate} per task.", "",
             "## Zoo tasks: test accuracy (%)", "", "| models | mean | median | max | min | n |", "|---|---|---|---|---|---|"]
    for key, row in summary["table"].items():
        label = {"original": "original checkpoints", "generated": "generated", "random": "random init"}.get(
            key, f"noise-perturbed originals, sigma = {key.split('_', 1)[-1]}")
        lines.append(f"| {label} | {row['acc_mean']:.2f} | {row['acc_median']:.2f} | {row['acc_max']:.2f} | "
                     f"{row['acc_min']:.2f} | {row['n']} |")
    m = summary.get("memorisation")
    if m:
        lines += ["", "## Memorisation (means over models)", "",
                  "| pair | distance to nearest original | wrong-prediction IoU |", "|---|---|---|",
                  f"| original vs nearest other original | {m['orig_nearest_dist']:.4g} | {m['orig_nearest_iou']:.3f} |",
                  f"| generated vs nearest original | {m['gen_nearest_dist']:.4g} | {m['gen_nearest_iou']:.3f} |"]
    h = summary.get("heldout")
    if h:
        lines += ["", f"## Held-out tasks {h['tasks']}", "",
                  f"- zero-shot accuracy of generated weights: mean {h['generated']['zero_shot_mean']:.2f}%, "
                  f"max {h['generated']['zero_shot_max']:.2f}% (chance {h['chance']:.1f}%, zoo models of other "
                  f"tasks {h['other_task_zoo']['zero_shot_mean']:.2f}%)", "",
                  "| init | steps to 90% of final | final accuracy (%) |", "|---|---|---|"]
        for arm in h["steps_to_90"]:
            lines.append(f"| {arm} | {h['steps_to_90'][arm]} | {h['final_acc'][arm]:.2f} |")
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ====================================================================== the workload


def run(config: WeightgenConfig, *, verbose: bool = False) -> dict[str, Any]:
    import torch

    from raygen import runtime
    from raygen.rundir import RunDir
    from raygen.weightgen.zoo import task_classes

    runtime.init(verbose=verbose)
    zoo_tasks, held_tasks = task_defs(config)
    run_dir = RunDir(config)
    root = run_dir.uri
    started = time.perf_counter()
    if config.zoo:
        print(f"[1/4] zoo: using {config.zoo}")
        zoo_uri, zoo_stage = config.zoo, {"uri": config.zoo, "written": 0}
    else:
        zoo_stage = collect_zoo(config, run_dir, zoo_tasks)
        zoo_uri = zoo_stage["uri"]
    thetas, cols, meta = read_zoo(zoo_uri)
    target = zoo_layout(config, task_classes(next(iter(zoo_tasks.values()))))
    target.check_matches(type(target).from_dict(meta["layout"]), f"zoo {zoo_uri}")
    meta["tasks"].update({str(t): d for t, d in held_tasks.items()})
    overlap = sorted(set(config.heldout_tasks) & set(cols["task_id"].tolist()))
    if overlap:
        raise UserError(f"held-out task {overlap[0]} is in the zoo at {zoo_uri}; hold out a task the zoo lacks")

    print(f"[2/4] parameter autoencoder ({config.ae_kind}, latent {config.latent_dim}, {config.ae_steps} steps)")
    ae_uri = _train_stage(stage_config(config, "ae", root, zoo_uri), train_autoencoder, verbose)
    print(f"[3/4] latent diffusion ({config.diff_steps} steps"
          + (", conditioned on a DeepSets task embedding)" if config.mode == "tasks" else ")"))
    diff_uri = _train_stage(stage_config(config, "diffusion", root, zoo_uri, ae_uri), train_diffusion, verbose)
    task_ids = sorted(set(cols["task_id"].tolist())) + list(config.heldout_tasks)
    gen_stage = generate(config, run_dir, ae_uri, diff_uri, meta, task_ids)
    gen, gcols, _ = read_zoo(gen_stage["uri"], "generated set")

    print("       evaluating: originals vs generated vs noise-perturbed vs random init"
          + (", fine-tuning on held-out tasks" if config.heldout_tasks else ""))
    _, norm, _ = load_autoencoder(ae_uri)
    on_zoo = np.isin(gcols["task_id"], cols["task_id"])
    table, memo = zoo_tables(config, thetas, cols, gen[torch.as_tensor(on_zoo)],
                             {k: v[on_zoo] for k, v in gcols.items()}, meta, norm)
    held = heldout_tables(config, thetas, cols, gen, gcols, meta) if config.heldout_tasks else None
    plots = _plots(run_dir, cols, gcols, memo, held)
    summary: dict[str, Any] = {
        "run_dir": root, "report": run_dir.child_uri("report.md"), "mode": config.mode,
        "zoo": {**zoo_stage, "members": len(thetas), "parameters": thetas.shape[1],
                "original": {k: table["original"][k] for k in ("acc_mean", "acc_median", "acc_max", "acc_min")}},
        "generated": gen_stage, "table": table,
        "memorisation": {k: v for k, v in memo.items() if k != "raw"},
        "checkpoints": {"ae": ae_uri, "diffusion": diff_uri}, "seconds": time.perf_counter() - started,
    }
    summary["zoo"]["generated"] = {k: table["generated"][k] for k in ("acc_mean", "acc_median", "acc_max", "acc_min")}
    if held is not None:
        summary["heldout"] = held
    run_dir.write_report(summary, _markdown(config, summary, plots))
    run_dir.close()
    print(f"zoo original: mean {table['original']['acc_mean']:.2f}% max {table['original']['acc_max']:.2f}%  |  "
          f"generated: mean {table['generated']['acc_mean']:.2f}% max {table['generated']['acc_max']:.2f}%")
    return summary
