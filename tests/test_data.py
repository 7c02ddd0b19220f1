import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raygen.data import digits_arrays, load_dataset
from raygen.errors import UserError


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_folder(root, per_class=3, size=6, mode="L"):
    rng = np.random.default_rng(0)
    truth = {}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            (root / cls / f"{i}.png").write_bytes(png_bytes(pixels))
            truth[(cls, i)] = pixels
    return truth


def test_digits_arrays_are_the_real_digits():
    images, labels = digits_arrays()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(set(labels.tolist())) == list(range(10))


def test_digits_dataset(ray_local):
    ds = load_dataset("digits")
    assert ds.count() == 1797
    row = ds.take(1)[0]
    assert row["image"].shape == (1, 8, 8)


def test_image_folder_labels_and_pixels(tmp_path, ray_local):
    truth = write_folder(tmp_path)
    rows = load_dataset(str(tmp_path)).take_all()
    assert len(rows) == 6
    labels = sorted(int(r["label"]) for r in rows)
    assert labels == [0, 0, 0, 1, 1, 1]  # classes in sorted folder order: cat=0, dog=1
    cat_pixels = {tuple((truth[("cat", i)] / 255.0).astype(np.float32).ravel()) for i in range(3)}
    got_cat = {tuple(r["image"].ravel()) for r in rows if r["label"] == 0}
    assert got_cat == cat_pixels


def test_image_folder_rgb_resize(tmp_path, ray_local):
    write_folder(tmp_path, mode="RGB", size=10)
    rows = load_dataset(str(tmp_path), image_size=4).take_all()
    assert rows[0]["image"].shape == (3, 4, 4)


def test_empty_image_folder_is_a_clear_error(tmp_path, ray_local):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="contains no images"):
        load_dataset(str(tmp_path))


def test_folder_without_classes_is_a_clear_error(tmp_path, ray_local):
    with pytest.raises(UserError, match="no class subfolders"):
        load_dataset(str(tmp_path))


def test_corrupt_image_names_the_file(tmp_path, ray_local):
    from raygen.errors import find_user_error

    write_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(Exception) as info:
        load_dataset(str(tmp_path)).take_all()
    err = find_user_error(info.value)
    assert err is not None and "broken.png" in str(err)


def test_missing_source_is_a_clear_error():
    with pytest.raises(UserError, match="not found"):
        load_dataset("/nonexistent/data")


def test_parquet_encoded_and_tensor(tmp_path, ray_local):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(4, 5, 5), dtype=np.uint8)
    pq.write_table(
        pa.table({"img": [png_bytes(p) for p in pixels], "y": [0, 1, 2, 3]}), tmp_path / "enc.parquet"
    )
    rows = load_dataset(str(tmp_path / "enc.parquet"), image_column="img", label_column="y", channels=1).take_all()
    by_label = {int(r["label"]): r["image"] for r in rows}
    np.testing.assert_allclose(by_label[2][0], pixels[2] / 255.0, atol=1e-7)

    flat = pa.table({"image": [p.astype(np.float32).ravel().tolist() for p in pixels], "label": [0, 1, 2, 3]})
    pq.write_table(flat, tmp_path / "flat.parquet")
    with pytest.raises(Exception) as info:
        load_dataset(str(tmp_path / "flat.parquet")).take_all()
    from raygen.errors import find_user_error

    assert "expected [C, H, W]" in str(find_user_error(info.value))


def test_parquet_missing_label_column(tmp_path, ray_local):
    pq.write_table(pa.table({"image": [b"x"], "target": [0]}), tmp_path / "d.parquet")
    with pytest.raises(UserError, match="no column 'label'.*set label_column"):
        load_dataset(str(tmp_path / "d.parquet"))


def test_digits_dataset_with_ids_in_few_blocks(ray_local):
    from raygen.contamination.sources import open_source
    from raygen.data import digits_dataset

    images, labels = digits_arrays()
    ds = digits_dataset(ids=True).materialize()
    assert ds.num_blocks() == 8  # from_items' default would be ~200 tiny blocks
    for row in ds.take(3):
        np.testing.assert_array_equal(row["image"], images[row["id"]])
        assert row["label"] == labels[row["id"]]
    # the contamination study's real source is the same dataset (it used to miss the block fix)
    assert open_source("digits", "real").dataset().materialize().num_blocks() == 8


def test_image_folder_in_a_bucket(bucket, ray_local):
    """One ImageFolder scanner for real and generated data, local or in a bucket: same labels and pixels."""
    from raygen import storage
    from raygen.data.generated import labelled_ids, read_labelled

    uri = storage.join(bucket, "folder")
    loc = storage.resolve(uri)
    rng = np.random.default_rng(0)
    truth = {}
    for cls in ("cat", "dog"):
        for i in range(2):
            pixels = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
            storage.write_bytes(loc.child(f"{cls}/{i}.png"), png_bytes(pixels))
            truth[(cls, i)] = pixels
    storage.write_bytes(loc.child("dog/readme.txt"), b"not an image")
    ids, labels = labelled_ids(uri)
    np.testing.assert_array_equal(ids, np.arange(4))
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    x, y = read_labelled(uri, np.array([3, 0]))
    np.testing.assert_allclose(x[:, 0], np.stack([truth[("dog", 1)], truth[("cat", 0)]]) / 255.0, atol=1e-7)
    assert y.tolist() == [1, 0]
    rows = load_dataset(uri).take_all()
    assert sorted(int(r["label"]) for r in rows) == [0, 0, 1, 1]


def test_symlink_loops_and_repeated_links_count_each_image_once(tmp_path):
    """A link back up the tree used to be walked again and again (140 images became 5,720 rows);
    a class folder that is itself a link still counts."""
    from raygen import storage
    from raygen.data.arrays import image_files

    root = tmp_path / "folder"
    write_folder(root, per_class=3)
    (root / "cat" / "again").symlink_to(root / "cat")  # a loop
    (root / "cat" / "up").symlink_to(root)  # a loop through the root
    (root / "dog" / "sub").mkdir()
    (root / "dog" / "sub" / "9.png").write_bytes((root / "dog" / "0.png").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    write_folder(elsewhere, per_class=2)
    (root / "emu").symlink_to(elsewhere / "cat")  # a linked class folder
    paths, labels = image_files(storage.resolve(str(root)))
    assert len(paths) == 3 + 3 + 1 + 2 == len(set(paths))
    assert labels.tolist() == [0] * 3 + [1] * 4 + [2] * 2
