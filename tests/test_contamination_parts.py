"""Corruptions, the generated-data loader, report shape checks and study config errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raygen.contamination.corruptions import corrupted_sets, gaussian_blur, rotate
from raygen.contamination.report import shape_checks, summarise
from raygen.data.generated import labelled_ids, load_labelled, read_labelled
from raygen.errors import UserError


def test_blur_keeps_constant_images_and_total_mass_inside():
    x = torch.full((2, 1, 8, 8), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(x, 1.0), x, rtol=0, atol=1e-15)
    spike = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    spike[0, 0, 4, 4] = 1.0
    out = gaussian_blur(spike, 1.0)
    assert abs(float(out.sum()) - 1.0) < 1e-12 and float(out[0, 0, 4, 4]) < 1.0
    torch.testing.assert_close(out, out.flip(-1).transpose(-1, -2))  # isotropic kernel


def test_rotation_by_zero_is_identity_and_by_90_is_rot90():
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(rotate(x, 0.0, g), x, rtol=0, atol=1e-12)
    out = rotate(x, 90.0, torch.Generator().manual_seed(1))
    for i in range(len(x)):  # each image turned a quarter either way, exactly (pixel centres map to centres)
        ok = [torch.allclose(out[i], torch.rot90(x[i], k, dims=(-2, -1)), atol=1e-6) for k in (1, -1)]
        assert any(ok)


def test_corrupted_sets_are_seeded_and_in_range():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = corrupted_sets(x, noise_std=0.2, blur_sigma=1.0, rotate_degrees=30, seed=3)
    b = corrupted_sets(x, noise_std=0.2, blur_sigma=1.0, rotate_degrees=30, seed=3)
    c = corrupted_sets(x, noise_std=0.2, blur_sigma=1.0, rotate_degrees=30, seed=4)
    for k in a:
        assert torch.equal(a[k], b[k]) and a[k].min() >= 0 and a[k].max() <= 1
    assert not torch.equal(a["noise"], c["noise"])


def write_samples(directory, ids, labels, images, chunk=0, **metadata):
    """A part file in `raygen sample`'s format: flat samples, label, shape (and `metadata`) in the
    raygen metadata."""
    directory.mkdir(parents=True, exist_ok=True)
    flat = images.reshape(len(ids), -1)
    table = pa.table({"sample_id": pa.array(ids), "seed": pa.array(ids),
                      "sample": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
                      "label": pa.array(labels)})
    table = table.replace_schema_metadata({"raygen": json.dumps({"shape": list(images.shape[1:]), **metadata}).encode()})
    pq.write_table(table, directory / f"part-{chunk:07d}.parquet")


def test_generated_samples_by_id(tmp_path, ray_local):
    rng = np.random.default_rng(0)
    images = rng.normal(0.5, 0.6, size=(30, 1, 4, 4))  # outside [0, 1] on purpose
    ids, labels = np.arange(30), np.arange(30) % 3
    write_samples(tmp_path / "run" / "samples", ids[15:], labels[15:], images[15:], chunk=1)
    write_samples(tmp_path / "run" / "samples", ids[:15], labels[:15], images[:15], chunk=0)
    got_ids, got_labels = labelled_ids(str(tmp_path / "run"))
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_labels, labels)
    x, y = read_labelled(str(tmp_path / "run"), np.array([17, 2, 29]))
    np.testing.assert_allclose(x, np.clip(images[[17, 2, 29]], 0, 1).astype(np.float32))
    np.testing.assert_array_equal(y, labels[[17, 2, 29]])
    rows = load_labelled(str(tmp_path / "run" / "samples")).take_all()
    assert sorted(r["id"] for r in rows) == ids.tolist()
    for r in rows:
        np.testing.assert_allclose(r["image"], np.clip(images[r["id"]], 0, 1).astype(np.float32))
        assert r["label"] == labels[r["id"]]


def test_samples_of_a_minus_one_to_one_model_are_mapped_to_unit_range(tmp_path):
    images = np.linspace(-1.5, 1.5, 2 * 16).reshape(2, 1, 4, 4)  # a diffusers model's range, and beyond
    write_samples(tmp_path / "run" / "samples", np.arange(2), np.array([0, 1]), images, data_range=[-1, 1])
    x, _ = read_labelled(str(tmp_path / "run"), np.array([0, 1]))
    np.testing.assert_allclose(x, np.clip((images + 1) / 2, 0, 1).astype(np.float32), rtol=0, atol=1e-7)


def test_unlabelled_samples_and_missing_path_are_user_errors(tmp_path):
    d = tmp_path / "samples"
    d.mkdir()
    table = pa.table({"sample_id": pa.array([0]), "sample": pa.array([[0.0] * 4], pa.list_(pa.float64(), 4))})
    pq.write_table(table, d / "part-0000000.parquet")
    with pytest.raises(UserError, match="class-conditional"):
        labelled_ids(str(d))
    with pytest.raises(UserError, match="not found"):
        labelled_ids(str(tmp_path / "nope"))


def test_generated_image_folder(tmp_path, ray_local):
    from PIL import Image

    values = {}
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for j in range(3):
            v = 40 * j + (100 if c == "b" else 0)
            Image.fromarray(np.full((4, 4), v, np.uint8), mode="L").save(tmp_path / c / f"{j}.png")
            values[(c, j)] = v / 255
    ids, labels = labelled_ids(str(tmp_path))
    np.testing.assert_array_equal(ids, np.arange(6))
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    x, y = read_labelled(str(tmp_path), np.array([4]))
    assert x.shape == (1, 1, 4, 4) and y.tolist() == [1]
    np.testing.assert_allclose(x[0, 0, 0, 0], values[("b", 1)], atol=1e-6)
    rows = {r["id"]: r for r in load_labelled(str(tmp_path)).take_all()}
    assert sorted(rows) == list(range(6))
    np.testing.assert_allclose(rows[4]["image"], x[0])


def rows_from(means):
    trials = []
    for arm, accs in means.items():
        for ratio, acc in accs.items():
            for seed, jitter in enumerate((-0.01, 0.01)):
                trials.append({"ratio": ratio, "arm": arm, "seed": seed, "clean_acc": acc + jitter, "ood_acc": acc / 2,
                               "noise_acc": 0.0, "blur_acc": 0.0, "rotate_acc": 0.0})
    return summarise(trials, ("noise", "blur", "rotate"))


def test_summary_and_shape_checks():
    paper_like = rows_from({"generated": {0: 0.9, 0.5: 0.8, 1: 0.3}, "control": {0: 0.9, 0.5: 0.88, 1: 0.85}})
    r = next(r for r in paper_like if r["ratio"] == 0.5 and r["arm"] == "generated")
    assert r["seeds"] == 2 and abs(r["clean_acc"] - 0.8) < 1e-12 and abs(r["clean_acc_std"] - 0.02 ** 0.5 * 0.1) < 1e-12
    assert shape_checks(paper_like) == {"monotone_drop": True, "generated_below_control": True, "gap_widens": True}
    other = rows_from({"generated": {0: 0.9, 0.5: 0.92, 1: 0.8}, "control": {0: 0.9, 0.5: 0.9, 1: 0.85}})
    # gaps 0, -0.02, 0.05: generated beats control at 0.5, so the gap first shrinks
    assert shape_checks(other) == {"monotone_drop": False, "generated_below_control": False, "gap_widens": False}


def test_study_config_errors_name_the_key():
    from raygen.workloads.study import StudyConfig

    with pytest.raises(UserError, match="'generated'"):
        StudyConfig.from_dict({})
    with pytest.raises(UserError, match="'ratios'"):
        StudyConfig.from_dict({"generated": "x", "ratios": [0, 1.5]})
    with pytest.raises(UserError, match="'seeds'"):
        StudyConfig.from_dict({"generated": "x", "seeds": [1, 1]})


def test_generated_samples_in_a_bucket(bucket):
    from raygen import storage
    from raygen.parts import Chunks, PartStore

    uri = storage.join(bucket, "sample_run")
    store = PartStore.at(storage.join(uri, "samples"))
    rng = np.random.default_rng(1)
    images = rng.random((7, 1, 2, 2))
    layout = Chunks(7, 4)
    for c in range(layout.count):
        ids = layout.ids(c)
        flat = images[ids].reshape(len(ids), -1)
        store.write(c, pa.table({"sample_id": ids, "sample": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), 4),
                                 "label": ids % 2}), layout, {"shape": [1, 2, 2]})
    ids, labels = labelled_ids(uri)
    np.testing.assert_array_equal(ids, np.arange(7))
    np.testing.assert_array_equal(labels, np.arange(7) % 2)
    x, y = read_labelled(uri, np.array([6, 1]))
    np.testing.assert_allclose(x, images[[6, 1]].astype(np.float32))
    assert y.tolist() == [0, 1]


def _folder(root, classes, per_class=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(np.full((8, 8), 40 * j, np.uint8), mode="L").save(root / c / f"{j}.png")


def test_generated_folders_are_matched_to_real_classes_by_name(tmp_path):
    from raygen.contamination.sources import open_source

    real = open_source("digits", "real")
    _folder(tmp_path / "named", ["3", "1", "7"])  # folder indices 0, 1, 2 are the sorted names 1, 3, 7
    matched = open_source(str(tmp_path / "named"), "generated").matched_to(real)
    assert sorted(set(matched.labels.tolist())) == [1, 3, 7]
    assert matched.read(matched.ids[:1])[1].tolist() == [1]
    _folder(tmp_path / "words", ["zero", "one"])
    with pytest.raises(UserError, match=r"generated class folders \['one', 'zero'\] .* are not classes of the real"):
        open_source(str(tmp_path / "words"), "generated").matched_to(real)


def test_label_agreement_sees_wrong_labels():
    from raygen.contamination.diversity import diversity
    from raygen.data import digits_arrays

    images, labels = digits_arrays()
    shuffled = (labels + 3) % 10  # every image labelled as another class
    div = diversity(images[:900], labels[:900], {"right": (images[900:1300], labels[900:1300]),
                                                 "wrong": (images[900:1300], shuffled[900:1300])},
                    generator=torch.Generator().manual_seed(0), steps=150, k=3)
    assert div["right"]["label_agreement"] > 0.8 > 0.2 > div["wrong"]["label_agreement"]
