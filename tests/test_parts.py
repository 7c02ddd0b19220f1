"""The Parquet part store: atomic parts, exactly-once verification (footer and full), resume scan.

Damage is done to real files the way it happens (a lost part, a truncated upload, a stray file)
or the way a bug would do it (a row too many or too few, another chunk's ids), bypassing the
store's writer, which refuses such parts. An independent oracle (a global count of every id in
every file) decides whether a damaged store is still exactly-once; both checks must agree with it.
"""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygen.parts import METADATA_KEY, Chunks, PartsIncomplete, PartStore, chunk_of, part_name

LAYOUT = Chunks(n=95, chunk_size=10)  # 10 parts, the last one short


def part_table(ids) -> pa.Table:
    ids = np.asarray(ids, dtype=np.int64)
    return pa.table({"sample_id": ids, "value": ids.astype(np.float64) * 0.5})


def full_store(tmp_path, layout=LAYOUT) -> PartStore:
    store = PartStore.at(str(tmp_path / "samples"))
    for c in range(layout.count):
        store.write(c, part_table(layout.ids(c)), layout, {"shape": [1], "chunk": c})
    return store


def overwrite(store: PartStore, chunk: int, ids) -> None:
    """Replace a part bypassing the writer's check (what a bug or another tool could do)."""
    pq.write_table(part_table(ids), store.path_of(chunk))


def oracle_exactly_once(store: PartStore, layout: Chunks) -> bool:
    """Every file a readable part of this layout, each id 0..N-1 exactly once, in its own chunk's part."""
    counts = np.zeros(layout.n, dtype=np.int64)
    directory = store.loc.path
    import os

    for name in os.listdir(directory):
        if name.startswith((".", "_")):
            continue
        chunk = chunk_of(name)
        if chunk is None or chunk >= layout.count:
            return False
        try:
            ids = pq.read_table(f"{directory}/{name}", columns=["sample_id"]).column(0).to_numpy()
        except (OSError, pa.ArrowException):
            return False
        start, stop = layout.range(chunk)
        if ((ids < start) | (ids >= stop)).any():
            return False
        np.add.at(counts, ids, 1)
    return bool((counts == 1).all())


def test_round_trip_and_both_checks_pass(tmp_path):
    store = full_store(tmp_path)
    for check in ("footer", "ids"):
        scan = store.scan(LAYOUT, check=check)
        assert scan.done.all() and scan.pending == [] and scan.problems == []
        store.verify(LAYOUT, check=check)
    assert store.metadata() == {"shape": [1], "chunk": 0}
    first = store.read_first(25)
    np.testing.assert_array_equal(first["sample_id"].to_numpy(), np.arange(25))
    np.testing.assert_array_equal(first["value"].to_numpy(), np.arange(25) * 0.5)
    assert store.dataset().count_rows() == 95
    assert pq.read_schema(store.path_of(3)).metadata[METADATA_KEY] == json.dumps({"shape": [1], "chunk": 3}).encode()
    assert store.read_manifest() is None
    store.write_manifest({"n_samples": 95})
    assert store.read_manifest() == {"n_samples": 95}
    assert store.scan(LAYOUT).problems == []  # the manifest is not a stray file


def test_writer_refuses_ids_other_than_its_chunk(tmp_path):
    store = PartStore.at(str(tmp_path / "samples"))
    for ids in (np.arange(10, 19), np.arange(11, 21), np.arange(20, 30), np.r_[10:15, 14, 16:20]):
        with pytest.raises(ValueError, match="part 1 must hold ids 10..19"):
            store.write(1, part_table(ids), LAYOUT, {})
    assert store.list_chunks()[0].tolist() == []


def problems_of(store: PartStore, check: str) -> str:
    with pytest.raises(PartsIncomplete) as caught:
        store.verify(LAYOUT, check=check)
    return str(caught.value)


@pytest.mark.parametrize("check", ["footer", "ids"])
def test_each_kind_of_damage_is_caught_and_named(tmp_path, check):
    store = full_store(tmp_path)
    # a part with one id missing
    overwrite(store, 2, np.arange(20, 29))
    # an id duplicated across two parts: chunk 4's id 40 also written into part 5
    overwrite(store, 5, np.r_[40, 50:60])
    # a part holding the wrong chunk's ids
    overwrite(store, 6, np.arange(80, 90))
    # a truncated part (an interrupted copy)
    data = open(store.path_of(7), "rb").read()
    open(store.path_of(7), "wb").write(data[: len(data) // 2])
    # a lost part and a stray file
    (tmp_path / "samples" / part_name(9)).unlink()
    (tmp_path / "samples" / "notes.txt").write_text("x")
    message = problems_of(store, check)
    for named in ("part-0000002.parquet: 9 rows, expected 10", "part-0000005.parquet: 11 rows",
                  "part-0000006.parquet:", "part-0000007.parquet: unreadable", "1 of 10 parts missing (part-0000009",
                  "stray file notes.txt"):
        assert named in message, (named, message)
    scan = store.scan(LAYOUT, check=check)
    assert scan.pending == [2, 5, 6, 7, 9]  # what a resume re-draws
    assert sorted(scan.damaged) == [2, 5, 6, 7]
    assert not oracle_exactly_once(store, LAYOUT)


def test_wrong_range_named_by_footer_check(tmp_path):
    store = full_store(tmp_path)
    overwrite(store, 6, np.arange(80, 90))
    assert "part-0000006.parquet: ids 80..89, expected 60..69" in problems_of(store, "footer")
    assert "part-0000006.parquet: 10 rows, expected 10 (ids 60..69): 10 missing, 0 repeated, 10 outside" in \
        problems_of(store, "ids")


def test_parts_beyond_n_and_misnamed_parts_are_stray(tmp_path):
    store = full_store(tmp_path)
    overwrite(store, 10, np.arange(100, 110))
    pq.write_table(part_table(np.arange(30, 40)), tmp_path / "samples" / "part-3.parquet")
    message = problems_of(store, "footer")
    assert "stray file part-0000010.parquet" in message and "stray file part-3.parquet" in message
    assert store.part_paths() == [store.path_of(c) for c in range(11)]  # readers never see part-3.parquet


def test_repeated_id_inside_a_part_with_the_right_count_needs_the_full_check(tmp_path):
    """The documented limit of the footer check: same row count, same min/max, one id twice."""
    store = full_store(tmp_path)
    overwrite(store, 3, np.r_[30, 31, 31, 33:40])
    store.verify(LAYOUT, check="footer")  # footer statistics cannot see it
    assert "part-0000003.parquet: 10 rows, expected 10 (ids 30..39): 1 missing, 1 repeated" in problems_of(store, "ids")
    assert not oracle_exactly_once(store, LAYOUT)


def test_temp_files_of_interrupted_writes_are_ignored(tmp_path):
    store = full_store(tmp_path)
    (tmp_path / "samples" / ".part-0000003.parquet.tmp-123-456").write_bytes(b"PAR1 half")
    store.verify(LAYOUT)
    assert store.dataset().count_rows() == 95


DAMAGE = ["none", "delete", "drop_row", "extra_row", "other_chunk", "shift", "truncate", "empty", "stray",
          "stray_part"]


def damage(store: PartStore, layout: Chunks, kind: str, rng: random.Random) -> None:
    c = rng.randrange(layout.count)
    ids = layout.ids(c)
    path = store.path_of(c)
    if kind == "delete":
        store.loc.fs.delete_file(path)
    elif kind == "drop_row":
        overwrite(store, c, np.delete(ids, rng.randrange(len(ids))))
    elif kind == "extra_row":  # an id of another chunk written here too
        other = layout.ids((c + 1) % layout.count)
        overwrite(store, c, np.sort(np.r_[ids, other[rng.randrange(len(other))]]))
    elif kind == "other_chunk" and layout.count > 1:
        overwrite(store, c, layout.ids((c + 1 + rng.randrange(layout.count - 1)) % layout.count))
    elif kind == "shift":
        overwrite(store, c, ids + rng.choice([-1, 1]))
    elif kind == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: rng.randrange(len(data))])
    elif kind == "empty":
        overwrite(store, c, np.arange(0))
    elif kind == "stray":
        open(f"{store.loc.path}/stray-{rng.randrange(99)}.parquet", "wb").write(b"not parquet")
    elif kind == "stray_part":
        overwrite(store, layout.count + rng.randrange(3), np.arange(layout.n, layout.n + 5))


def test_fast_and_full_checks_agree_with_the_oracle_on_random_damage(tmp_path, monkeypatch):
    import raygen.parts

    monkeypatch.setattr(raygen.parts, "_BATCH", 4)  # parts are checked in rounds: cross round boundaries
    rng = random.Random(0)
    verdicts = {True: 0, False: 0}
    for trial in range(40):
        layout = Chunks(n=rng.randrange(1, 60), chunk_size=rng.randrange(1, 12))
        store = full_store(tmp_path / str(trial), layout)
        for _ in range(rng.randrange(0, 3)):
            damage(store, layout, rng.choice(DAMAGE), rng)
        truth = oracle_exactly_once(store, layout)
        verdicts[truth] += 1
        for check in ("footer", "ids"):
            scan = store.scan(layout, check=check)
            assert (scan.problems == []) == truth, (trial, check, scan.problems)
    assert min(verdicts.values()) >= 5  # both verdicts were exercised


def test_store_in_a_bucket(bucket):
    """The same store on a real S3 API: parts written, listed, checked, damaged, read."""
    from raygen import storage

    uri = storage.join(bucket, "run", "samples")
    store = PartStore.at(uri)
    assert store.scan(LAYOUT).pending == list(range(LAYOUT.count))  # no prefix yet: nothing written
    for c in range(LAYOUT.count):
        store.write(c, part_table(LAYOUT.ids(c)), LAYOUT, {"shape": [1]})
    store.verify(LAYOUT)
    store.verify(LAYOUT, check="ids")
    np.testing.assert_array_equal(store.read_first(95)["sample_id"].to_numpy(), np.arange(95))
    # a truncated object under a part's name (what a non-atomic writer could leave)
    fs = store.loc.fs
    with fs.open_input_stream(store.path_of(4)) as f:
        data = f.read()
    with fs.open_output_stream(store.path_of(4)) as f:
        f.write(data[:20])
    scan = store.scan(LAYOUT)
    assert scan.pending == [4] and "unreadable" in scan.damaged[4]
