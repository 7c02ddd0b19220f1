"""`raygen.fanout`: one driver for chunked output (settings, resume, progress, exactly-once)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raygen import fanout
from raygen.errors import UserError
from raygen.parts import Chunks, PartStore


class Squares:
    """A toy chunk worker: rows (id, id**2 + offset) for the chunk's ids."""

    def __init__(self, n: int, chunk_size: int, offset: int):
        self.layout, self.offset = Chunks(n, chunk_size), offset

    def __call__(self, chunk: int):
        ids = self.layout.ids(chunk)
        if self.offset < 0:
            raise ValueError(f"chunk {chunk} refuses")
        return pa.table({"sample_id": ids, "value": ids**2 + self.offset}), {"calls": 1}


def test_settle_records_then_refuses_other_settings_and_keeps_first_decisions(tmp_path):
    store = PartStore.at(str(tmp_path / "out"))
    asked = []

    def decide():
        asked.append(1)
        return 7

    first = fanout.settle(store, {"n": 10, "seed": 0}, decided_once={"chunk_size": decide})
    assert first == {"n": 10, "seed": 0, "chunk_size": 7} and asked == [1]
    # a re-run keeps the first run's decision without deciding again
    assert fanout.settle(store, {"n": 10, "seed": 0}, decided_once={"chunk_size": decide})["chunk_size"] == 7
    assert asked == [1]
    with pytest.raises(UserError, match=r"other settings \(seed\).*--fresh"):
        fanout.settle(store, {"n": 10, "seed": 1}, decided_once={"chunk_size": decide})
    with pytest.raises(UserError, match=r"other settings \(extra\)"):  # a key only one side has differs too
        fanout.settle(store, {"n": 10, "seed": 0, "extra": 1}, decided_once={"chunk_size": decide})


def test_run_chunks_writes_what_the_worker_makes_exactly_once_and_resumes(tmp_path, ray_local, capsys):
    from raygen.rundir import RunDir
    from raygen.workloads.sample import SampleConfig

    run_dir = RunDir(SampleConfig.from_dict({"name": "fan", "storage_path": str(tmp_path)}))
    store = PartStore(run_dir.child("out"))
    layout = Chunks(23, 5)
    output = fanout.Output(store, layout, {"what": "squares"})
    kwargs = {"n": 23, "chunk_size": 5, "offset": 3}
    done = fanout.run_chunks(output, Squares, kwargs, what="squares", workers=2, run_dir=run_dir)
    assert (done.rows, done.resumed, done.figures) == (23, 0, {"calls": 5})
    store.verify(layout, check="ids")
    here = Squares(**kwargs)
    for c in range(layout.count):  # the parts are exactly the worker's tables, with the metadata
        part = store.loc.child(f"part-{c:07d}.parquet").path
        assert pq.read_table(part).equals(here(c)[0])
        assert store.part_metadata(part) == {"what": "squares"}
    # a lost and a damaged part: only they are written again, the damaged one said
    lost, damaged = (tmp_path / "fan" / "out" / f"part-{c:07d}.parquet" for c in (1, 3))
    lost.unlink()
    damaged.write_bytes(damaged.read_bytes()[:50])
    capsys.readouterr()
    again = fanout.run_chunks(output, Squares, kwargs, what="squares", workers=1, run_dir=run_dir)
    assert (again.rows, again.resumed) == (10, 3)
    assert "re-writing 1 damaged part(s): part-0000003.parquet: unreadable" in capsys.readouterr().out
    last = json.loads((tmp_path / "fan" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["rows_this_run"] == 10 and "squares_per_s" in last
    store.verify(layout, check="ids")
    # an error in a chunk is raised, not swallowed
    (tmp_path / "fan" / "out" / "part-0000000.parquet").unlink()
    with pytest.raises(ValueError, match="chunk 0 refuses"):
        fanout.run_chunks(output, Squares, {**kwargs, "offset": -1}, what="squares", workers=2)
