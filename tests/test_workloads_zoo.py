"""`raygen zoo`: the model zoo as its own workload (digits, an image folder, Parquet with a task
column), exactly once and bit-identical for 1 or 2 actors, reused by `raygen weightgen`; its
bad-input lines (data-dependent cases: they need files, so they live here, not in test_bad_inputs)."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raygen.parts import Chunks, PartStore
from raygen.models.params import ParamLayout, unflatten
from raygen.weightgen.zoo import SPLIT, build_classifier, load_source
from raygen.workloads import weightgen, zoo
from raygen.weightgen.store import read_zoo
from raygen.workloads.zoo import ZooConfig
from tests.test_bad_inputs import JOBS

TASKS = dict(mode="tasks", task_family="subset", classes_per_task=2, zoo_tasks=2, seeds=2, member_steps=15,
             member_batch=16)


def _pixels(labels: list[int], size: int = 6, seed: int = 0) -> np.ndarray:
    """uint8 [N, size, size]: noise plus one bright row that depends on the label (learnable)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), size, size)).astype(np.uint8)
    for image, label in zip(images, labels):
        image[label % size] = 255
    return images


def _image_folder(root, classes=("cat", "dog", "emu"), per_class=12, sizes=None):
    """root/<class>/<i>.png grayscale; returns (pixels, labels) in the scanner's order (sorted)."""
    labels = [c for c in range(len(classes)) for _ in range(per_class)]
    pixels = _pixels(labels)
    for k, (image, label) in enumerate(zip(pixels, labels)):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        size = sizes[k % len(sizes)] if sizes else image.shape[0]
        Image.fromarray(image).resize((size, size)).save(folder / f"{k:03d}.png")
    return pixels, np.asarray(labels)


def _task_parquet(path, groups=(("a", (0, 1)), ("b", (2, 3)), ("c", (5, 7))), per_class=10, columns=None):
    """Rows of tasks a, b, c (label values per task), images as [H, W] uint8 nested lists."""
    tasks = [t for t, labels in groups for _ in labels for _ in range(per_class)]
    labels = [lb for _, group in groups for lb in group for _ in range(per_class)]
    pixels = _pixels(labels)
    table = {"image": pa.array([p.tolist() for p in pixels], type=pa.list_(pa.list_(pa.uint8()))), "label": labels,
             "task": tasks}
    pq.write_table(pa.table({k: table[k] for k in (columns or table)}), path)
    return pixels, np.asarray(labels), np.asarray(tasks)


def _test_accuracy(meta, theta, images, labels, keep) -> float:
    """A member's accuracy on its task's test rows, selected here from the raw arrays (the split
    rule: a seed-0 permutation of the rows, the last 1 - train - val of them are the test set)."""
    n = len(images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    test = order[int(SPLIT[0] * n) + int(SPLIT[1] * n):]
    test = test[torch.as_tensor(keep)[test]]
    net = build_classifier(meta["arch"]).eval()
    net.load_state_dict(unflatten(theta, ParamLayout.from_dict(meta["layout"])))
    x = torch.as_tensor(images[test.numpy()], dtype=torch.float32)[:, None] / 255.0
    with torch.no_grad():
        return float((net(x).argmax(-1) == torch.as_tensor(labels[test.numpy()])).double().mean())


def test_zoo_on_digits_is_exactly_once_bit_identical_for_1_or_2_actors_and_reused(ray_local, tmp_path, capsys):
    one = zoo.run(ZooConfig.from_dict({**TASKS, "name": "one", "storage_path": str(tmp_path), "num_actors": 1}))
    two = zoo.run(ZooConfig.from_dict({**TASKS, "name": "two", "storage_path": str(tmp_path), "num_actors": 2}))
    PartStore.at(two["uri"], "model_id").verify(Chunks(4, 1), check="ids")
    a, b = read_zoo(one["uri"]), read_zoo(str(tmp_path / "two"))  # a run dir or its parts/
    assert torch.equal(a[0], b[0])
    for k in a[1]:
        assert np.array_equal(a[1][k], b[1][k]), k
    # the report: its per-task figures are the parts' own test accuracies
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["members"] == 4 and report["tasks"] == 2 and report["parameters"] == b[0].shape[1]
    assert report["device"] == "cpu" and b[2]["device"] == "cpu"  # no gpus_per_member: the CPU, in report and parts
    for t in (0, 1):
        acc = 100 * b[1]["test_acc"][b[1]["task_id"] == t]
        row = report["per_task"][str(t)]
        assert (row["acc_mean"], row["acc_min"], row["acc_max"], row["n"]) == pytest.approx(
            (acc.mean(), acc.min(), acc.max(), 2))
    assert (tmp_path / "two" / "accuracy_hist.png").stat().st_size > 0
    assert "| 1 | classes " in (tmp_path / "two" / "report.md").read_text()
    # a re-run trains nothing and rewrites no part
    parts = sorted((tmp_path / "two" / "parts").glob("part-*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    capsys.readouterr()
    again = zoo.run(ZooConfig.from_dict({**TASKS, "name": "two", "storage_path": str(tmp_path), "num_actors": 1}))
    assert again["written"] == 0 and "reusing them, nothing to train" in capsys.readouterr().out
    assert again["device"] == "cpu"  # a reused zoo reports what its parts were made on
    assert [p.stat().st_mtime_ns for p in parts] == mtimes
    # a lost part is trained again, and the logged rate counts only that part's members
    parts[2].unlink()
    resumed = zoo.run(ZooConfig.from_dict({**TASKS, "name": "two", "storage_path": str(tmp_path)}))
    assert resumed["written"] == 1 and torch.equal(read_zoo(resumed["uri"])[0], b[0])
    last = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["rows_this_run"], last["step"]) == (1, 4)


def test_zoo_from_an_image_folder(ray_local, tmp_path):
    pixels, labels = _image_folder(tmp_path / "pets")
    cfg = ZooConfig.from_dict({**TASKS, "name": "pets", "storage_path": str(tmp_path / "runs"),
                               "source": str(tmp_path / "pets"), "seeds": 1, "num_actors": 1})
    data = load_source(cfg.source_spec())  # the folder read in sorted order, exactly
    assert torch.equal(data.images[:, 0], torch.as_tensor(pixels, dtype=torch.float32) / 255.0)
    assert torch.equal(data.labels, torch.as_tensor(labels))
    summary = zoo.run(cfg)
    thetas, cols, meta = read_zoo(summary["uri"])
    assert meta["source"]["class_names"] == ["cat", "dog", "emu"] and meta["source"]["shape"] == [1, 6, 6]
    assert meta["arch"]["in_channels"] == 1 and meta["arch"]["num_classes"] == 2
    for i, t in enumerate(cols["task_id"].tolist()):
        classes = meta["tasks"][str(t)]["classes"]  # subset of the folder's 3 classes, relabelled 0, 1
        assert meta["tasks"][str(t)]["family"] == "subset" and set(classes) < {0, 1, 2}
        relabelled = np.full(3, -1)
        relabelled[classes] = [0, 1]
        keep = np.isin(labels, classes)
        assert cols["test_acc"][i] == pytest.approx(
            _test_accuracy(meta, thetas[i], pixels, relabelled[labels], keep), abs=1e-12)
    names = ", ".join(["cat", "dog", "emu"][c] for c in meta["tasks"]["0"]["classes"])
    assert f"| 0 | classes {names} |" in (tmp_path / "runs" / "pets" / "report.md").read_text()


def test_a_parquet_written_by_ray_data_reads_before_ray_is_imported(ray_local, tmp_path):
    """Ray Data writes image arrays as its own tensor extension type; the zoo's preflight reads the
    source before Ray is imported, where pyarrow alone would see flat lists and refuse the shape."""
    import subprocess
    import sys

    import ray

    labels = [0, 1, 2] * 4
    pixels = _pixels(labels)
    ray.data.from_items([{"image": p, "label": lb} for p, lb in zip(pixels, labels)]).repartition(1).write_parquet(
        str(tmp_path / "t.parquet"))
    script = ("import sys; import numpy as np; from raygen.data.arrays import read_arrays; "
              "assert 'ray' not in sys.modules; "
              f"x, y, names, _ = read_arrays({str(tmp_path / 't.parquet')!r}); "
              "np.save(sys.argv[1], x); print(y.tolist(), names, x.shape)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{labels} ['0', '1', '2'] (12, 1, 6, 6)"
    assert np.array_equal(np.load(tmp_path / "x.npy")[:, 0], pixels.astype(np.float32) / 255.0)


def test_weightgen_reuses_a_finished_zoo_of_a_parquet_task_column(ray_local, tmp_path, capsys):
    pixels, labels, tasks = _task_parquet(tmp_path / "tasks.parquet")
    cfg = weightgen.WeightgenConfig.from_dict({
        "name": "wg", "storage_path": str(tmp_path), "mode": "tasks", "source": str(tmp_path / "tasks.parquet"),
        "task_column": "task", "zoo_tasks": 2, "heldout_tasks": [2], "seeds": 2, "member_steps": 15,
        "member_batch": 16, "ae_steps": 10, "diff_steps": 10, "n_generate": 2, "sample_steps": 2, "latent_dim": 4,
        "ae_hidden": 16, "diff_hidden": 16, "diff_depth": 1, "cond_dim": 4, "support_shots": 2, "finetune_steps": 2,
        "finetune_every": 1, "finetune_models": 1, "log_every": 5})
    # the zoo stage run by `raygen zoo` first, where weightgen keeps it: <run dir>/zoo
    collected = zoo.run(zoo.stage_config(cfg, str(tmp_path / "wg")))
    thetas, cols, meta = read_zoo(collected["uri"])
    # the tasks are the column's values a, b; labels 0,1,2,3,5,7 are classes 0..5, relabelled per task
    assert meta["source"]["task_values"] == ["a", "b", "c"]
    assert meta["tasks"]["1"] == {"family": "column", "index": 1, "value": "b", "classes": [2, 3]}
    i = int(np.flatnonzero(cols["task_id"] == 1)[0])
    assert cols["test_acc"][i] == pytest.approx(
        _test_accuracy(meta, thetas[i], pixels, np.select([labels == 2, labels == 3], [0, 1], -1), tasks == "b"),
        abs=1e-12)
    parts = sorted((tmp_path / "wg" / "zoo" / "parts").glob("part-*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    capsys.readouterr()
    summary = weightgen.run(cfg)
    assert "reusing them, nothing to train" in capsys.readouterr().out
    assert summary["zoo"]["written"] == 0 and [p.stat().st_mtime_ns for p in parts] == mtimes
    # the held-out task is the column's third value, never in the zoo, evaluated on its own rows
    _, gcols, gmeta = read_zoo(summary["generated"]["uri"])
    assert gmeta["tasks"]["2"] == {"family": "column", "index": 2, "value": "c", "classes": [4, 5]}
    assert sorted(set(gcols["task_id"].tolist())) == [0, 1, 2] and 2 not in cols["task_id"]
    assert summary["heldout"]["chance"] == pytest.approx(50.0)
    assert summary["zoo"]["device"] == "cpu" and gmeta["device"] == "cpu"  # what ran where, per stage


# ---------------------------------------------------------------------- bad inputs that read data

ZOO_JOB, WG_JOB = JOBS / "zoo_digits.yaml", JOBS / "weightgen_tasks.yaml"


def _parquet_case(**kwargs):
    return lambda tmp: _task_parquet(tmp / "d.parquet", **kwargs)


def _folder(tmp):
    _image_folder(tmp / "imgs")


COLUMN = ["task_column=task", "task_family=digits"]
BAD_DATA = [
    ("missing-source", None, ZOO_JOB, ["source=nope"], "data source 'nope' not found"),
    ("classes-per-task-digits", None, ZOO_JOB, ["classes_per_task=11"],
     "classes_per_task is 11 but the data has 10 classes"),
    ("task-column-on-digits", None, ZOO_JOB, COLUMN, "task_column 'task' needs a Parquet source"),
    ("image-sizes", lambda tmp: _image_folder(tmp / "imgs", sizes=(6, 8)), ZOO_JOB, ["source={tmp}/imgs"],
     "have different sizes"),
    ("classes-per-task-folder", _folder, ZOO_JOB, ["source={tmp}/imgs", "classes_per_task=4"],
     "classes_per_task is 4 but the data has 3 classes"),
    ("task-column-on-folder", _folder, ZOO_JOB, ["source={tmp}/imgs", *COLUMN], "needs a Parquet source"),
    ("task-column-missing", _parquet_case(columns=("image", "label")), ZOO_JOB, ["source={tmp}/d.parquet", *COLUMN],
     "has no column 'task'"),
    ("label-column-missing", _parquet_case(), ZOO_JOB, ["source={tmp}/d.parquet", "label_column=y"],
     "has no column 'y' (columns: image, label, task); set label_column"),
    ("zoo-tasks-beyond-column", _parquet_case(), ZOO_JOB, ["source={tmp}/d.parquet", *COLUMN, "zoo_tasks=5"],
     "task 3 is not in the data"),
    ("tasks-of-unequal-classes", _parquet_case(groups=(("a", (0, 1)), ("b", (2, 3, 4)))), ZOO_JOB,
     ["source={tmp}/d.parquet", *COLUMN, "zoo_tasks=2"], "have 2 and 3 classes"),
    ("heldout-same-task", None, WG_JOB, ["task_family=digits", "zoo_tasks=1", "heldout_tasks=[5]"],
     "held-out task 5 defines the same task as zoo task 0"),
    ("parquet-of-0-rows", lambda tmp: pq.write_table(pa.table({"image": pa.array([], pa.binary()),
                                                               "label": pa.array([], pa.int64())}), tmp / "e.parquet"),
     ZOO_JOB, ["source={tmp}/e.parquet"], "holds no images (0 rows)"),
    ("heldout-not-in-data", _parquet_case(), WG_JOB,
     ["source={tmp}/d.parquet", *COLUMN, "zoo_tasks=2", "heldout_tasks=[9]"], "task 9 is not in the data"),
]


@pytest.mark.parametrize("case", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_zoo_data_is_one_clear_line(case, tmp_path):
    """Refused by the workload before it starts Ray (this test is not marked `ray`: the conftest
    guard checks) and before anything is written. (`raygen zoo` on the command line starts Ray
    before it calls the workload, so these are not rows of test_bad_inputs.)"""
    from raygen.errors import UserError
    from raygen.jobs import load_job
    from raygen.workloads import workload_module

    _, make, job_file, sets, phrase = case
    if make is not None:
        make(tmp_path)
    before = sorted(os.listdir(tmp_path))
    job = load_job(job_file, [s.format(tmp=tmp_path) for s in sets] + [f"storage_path={tmp_path}/runs"])
    with pytest.raises(UserError) as info:
        workload_module(job.workload).run(job.config)
    assert phrase in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_image_size_resizes_a_folder_of_mixed_sizes(tmp_path):
    _image_folder(tmp_path / "imgs", sizes=(6, 8))
    cfg = ZooConfig.from_dict({"source": str(tmp_path / "imgs"), "image_size": 5})
    data = load_source(cfg.source_spec())
    assert data.images.shape == (36, 1, 5, 5) and data.info["shape"] == [1, 5, 5]
