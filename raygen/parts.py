"""Parquet part store: rows with ids 0..N-1, written in fixed chunks, exactly once, on any filesystem.

One home for the on-disk format shared by `raygen sample` (samples), the generated-data loader
(`raygen.data.generated`) and the weight-generation workloads (model zoo, generated weights).

Layout of a store directory (a local path or a bucket prefix, through `raygen.storage`):

    part-0000000.parquet   ids [0, chunk_size)                 one file per chunk: the name says
    part-0000001.parquet   ids [chunk_size, 2*chunk_size)      which ids it must hold
    ...
    _manifest.json         the settings the parts were made with (written by the workload)

A store is described by N (ids 0..N-1) and `chunk_size`: chunk c holds exactly the ids
[c*chunk_size, min((c+1)*chunk_size, N)) in its `id_column` ("sample_id" for samples,
"model_id" for a zoo), and every file carries the workload's JSON metadata under
`METADATA_KEY` in its Parquet schema (sampler settings, shape, parameter layout, ...).

Guarantees and how they are kept:
- Atomic parts: a part is serialised in memory and written with `raygen.storage.write_bytes`
  (local: temp name + rename; object store: one PUT, which only becomes visible complete), so a
  reader never sees a partial file under a final name. Left-over local temp files start with "."
  and are ignored by the listing and by Parquet readers.
- Deterministic parts: a chunk's content depends only on the chunk, so a retried or re-run
  chunk rewrites the same bytes; that is what makes "write it again" a safe repair.
- Checked by the writer: `write` refuses a table whose ids are not exactly its chunk's range.
- Exactly-once verification in O(parts) work and O(1) memory in N (issue 17): `scan` lists the
  directory once and reads only each part's footer (row count and min/max id from the column
  statistics); the driver then checks only that the set of chunks is complete and that there are
  no stray files. `check="ids"` reads every part's id column instead (exact, still one part at a
  time; for tests and small runs).
  What the footer check cannot see: a part rewritten by something else with the right row count
  and range but a repeated id inside it (e.g. ids 0,1,1,3 for chunk 0..3). `write` makes that
  impossible for raygen's own writers; `check="ids"` finds it.
- Resume: `scan(...).pending` is the chunks still to write: missing ones and damaged ones
  (unreadable, truncated, wrong rows), which the caller re-draws and reports (`scan(...).damaged`).

Usage (a workload; `run_dir.child("samples")` is a `raygen.storage.Location`):

    store = PartStore(run_dir.child("samples"))              # or PartStore.at("s3://b/runs/x/samples")
    layout = Chunks(n=N, chunk_size=500)
    todo = store.scan(layout).pending                        # resume: chunks still to write
    ...in an actor: store.write(chunk, table, layout, metadata={...})
    store.verify(layout)                                     # raises PartsIncomplete naming what is wrong
    table = store.read_first(1000)                           # the first rows by id
    ds = store.ray_dataset(columns=[...])                    # Ray Data over exactly the part files
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import math
import re
from typing import Any, Literal

import numpy as np

from raygen import storage
from raygen.errors import UserError
from raygen.storage import first_line

METADATA_KEY = b"raygen"  # schema metadata key holding the workload's JSON settings
MANIFEST = "_manifest.json"
# Columns of `raygen sample` parts (the zoo uses its own columns and id_column="model_id").
ID, SEED, SAMPLE, LABEL = "sample_id", "seed", "sample", "label"

_PART = re.compile(r"part-(\d+)\.parquet")
_FOOTER_THREADS = 8  # footers are small reads: threads hide the latency (per-object GETs on a bucket)
_BATCH = 1024  # parts checked per round: bounds what is in flight, whatever the number of parts


def part_name(chunk: int) -> str:
    return f"part-{chunk:07d}.parquet"


def chunk_of(name: str) -> int | None:
    """The chunk a file name stands for, or None if it is not exactly a part name."""
    match = _PART.fullmatch(name)
    return int(match.group(1)) if match and part_name(int(match.group(1))) == name else None


def _ignored(name: str) -> bool:
    """Hidden temp files of interrupted local writes and `_`-files (the manifest): not data."""
    return name.startswith((".", "_"))


@dataclasses.dataclass(frozen=True)
class Chunks:
    """Ids 0..n-1 cut into chunks of `chunk_size`: chunk c holds [c*chunk_size, min((c+1)*chunk_size, n))."""

    n: int
    chunk_size: int

    @property
    def count(self) -> int:
        return math.ceil(self.n / self.chunk_size)

    def range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n)

    def ids(self, chunk: int) -> np.ndarray:
        return np.arange(*self.range(chunk), dtype=np.int64)

    def rows_in(self, chunks: list[int]) -> int:
        return sum(stop - start for start, stop in map(self.range, chunks))


class PartsIncomplete(RuntimeError):
    """A store that does not hold every id exactly once; the message names each problem."""


@dataclasses.dataclass
class Scan:
    """What a store holds for a `Chunks` layout (from one listing and one footer read per part)."""

    layout: Chunks
    done: np.ndarray  # bool [count]: chunk c has a sound part
    damaged: dict[int, str]  # chunk -> what is wrong with its part (re-draw it)
    stray: list[str]  # names that are not parts of this layout (other files, chunks >= count)

    @property
    def pending(self) -> list[int]:
        """Chunks to (re)write: missing or damaged."""
        return np.flatnonzero(~self.done).tolist()

    @property
    def problems(self) -> list[str]:
        """Every reason the store is not exactly-once, one line each (missing chunks collapsed)."""
        out = [f"{part_name(c)}: {why}" for c, why in sorted(self.damaged.items())]
        missing = [c for c in self.pending if c not in self.damaged]
        if missing:
            shown = ", ".join(part_name(c) for c in missing[:3]) + (", ..." if len(missing) > 3 else "")
            out.append(f"{len(missing)} of {self.layout.count} parts missing ({shown})")
        out += [f"stray file {name}" for name in self.stray]
        return out


@dataclasses.dataclass(frozen=True)
class PartStore:
    """The parts under one directory (`loc`), ids in `id_column`."""

    loc: storage.Location
    id_column: str = ID

    @classmethod
    def at(cls, location: str, id_column: str = ID) -> "PartStore":
        """A store at a local path or URI (`s3://bucket/runs/name/samples`)."""
        return cls(storage.resolve(location), id_column)

    @property
    def uri(self) -> str:
        return storage.display(self.loc.uri)

    def path_of(self, chunk: int) -> str:
        return self.loc.child(part_name(chunk)).path

    # ------------------------------------------------------------------ writing

    def write(self, chunk: int, table, layout: Chunks, metadata: dict[str, Any]) -> None:
        """Write `table` as chunk `chunk`'s part, atomically; its ids must be exactly the chunk's range."""
        import pyarrow.parquet as pq

        start, stop = layout.range(chunk)
        ids = table.column(self.id_column).to_numpy()
        if not np.array_equal(ids, np.arange(start, stop)):
            raise ValueError(f"part {chunk} must hold ids {start}..{stop - 1} in order; got {len(ids)} other ids")
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(self.loc.child(part_name(chunk)), buffer.getvalue())

    def write_manifest(self, settings: dict[str, Any]) -> None:
        storage.write_bytes(self.loc.child(MANIFEST), json.dumps(settings, indent=2).encode())

    def read_manifest(self) -> dict[str, Any] | None:
        loc = self.loc.child(MANIFEST)
        return json.loads(storage.read_bytes(loc)) if storage.exists(loc) else None

    # ------------------------------------------------------------------ listing and checking

    def list_chunks(self) -> tuple[np.ndarray, list[str]]:
        """(sorted chunk numbers that have a part file, sorted names of everything else): one listing
        of the directory (pyarrow pages through it on an object store), no file opened. Kept as
        chunk numbers: a part's path is `path_of(chunk)`, since only canonical names count."""
        import pyarrow.fs as pafs

        chunks, other = [], []
        for info in self.loc.fs.get_file_info(pafs.FileSelector(self.loc.path, allow_not_found=True)):
            if _ignored(info.base_name):
                continue
            chunk = chunk_of(info.base_name) if info.type == pafs.FileType.File else None
            (other.append(info.base_name) if chunk is None else chunks.append(chunk))
        return np.sort(np.asarray(chunks, dtype=np.int64)), sorted(other)

    def check_part(self, chunk: int, layout: Chunks, *, check: Literal["footer", "ids"] = "footer") -> str | None:
        """None if chunk's part holds exactly its ids, else what is wrong (one line).

        "footer": row count and min/max id from the Parquet footer's column statistics (one small
        read); falls back to reading the ids if the writer recorded no statistics. "ids": reads the
        id column and compares it with the chunk's range.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        start, stop = layout.range(chunk)
        try:
            with self.loc.fs.open_input_file(self.path_of(chunk)) as f:
                parquet = pq.ParquetFile(f)
                if check == "footer":
                    stats = _id_statistics(parquet.metadata, self.id_column)
                    if stats is not None:
                        rows, low, high = stats
                        if rows != stop - start:
                            return f"{rows} rows, expected {stop - start} (ids {start}..{stop - 1})"
                        if rows and (low, high) != (start, stop - 1):
                            return f"ids {low}..{high}, expected {start}..{stop - 1}"
                        return None
                ids = parquet.read(columns=[self.id_column]).column(0).to_numpy()
        except (OSError, pa.ArrowException, KeyError) as exc:  # truncated / not Parquet / no id column
            return f"unreadable ({first_line(exc)})"
        expected = np.arange(start, stop)
        if np.array_equal(np.sort(ids), expected):
            return None
        missing = len(np.setdiff1d(expected, ids))
        repeated = len(ids) - len(np.unique(ids))
        foreign = int(((ids < start) | (ids >= stop)).sum())
        return (f"{len(ids)} rows, expected {stop - start} (ids {start}..{stop - 1}): {missing} missing, "
                f"{repeated} repeated, {foreign} outside the chunk")

    def scan(self, layout: Chunks, *, check: Literal["footer", "ids"] = "footer") -> Scan:
        """One listing, then `check_part` on every part (threads, a bounded batch of parts in flight):
        driver memory is a few bytes per part, nothing per id."""
        chunks, stray = self.list_chunks()
        stray += [part_name(c) for c in chunks[chunks >= layout.count].tolist()]
        chunks = chunks[chunks < layout.count]
        done = np.zeros(layout.count, dtype=bool)
        damaged: dict[int, str] = {}
        with concurrent.futures.ThreadPoolExecutor(_FOOTER_THREADS) as pool:
            for start in range(0, len(chunks), _BATCH):
                batch = chunks[start:start + _BATCH].tolist()
                for chunk, problem in zip(batch, pool.map(lambda c: self.check_part(c, layout, check=check), batch)):
                    if problem is None:
                        done[chunk] = True
                    else:
                        damaged[chunk] = problem
        return Scan(layout, done, damaged, sorted(stray))

    def verify(self, layout: Chunks, *, check: Literal["footer", "ids"] = "footer") -> None:
        """Raise PartsIncomplete (naming each problem) unless every id 0..N-1 is in exactly one row."""
        problems = self.scan(layout, check=check).problems
        if problems:
            shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
            raise PartsIncomplete(f"output {self.uri} does not hold ids 0..{layout.n - 1} exactly once: {shown}")

    # ------------------------------------------------------------------ reading

    def part_paths(self) -> list[str]:
        """Paths of every part file, in chunk order (for readers that take a file list)."""
        chunks, _ = self.list_chunks()
        return [self.path_of(int(c)) for c in chunks]

    def metadata(self) -> dict[str, Any]:
        """The workload's JSON metadata, from the first part."""
        paths = self.part_paths()
        if not paths:
            raise UserError(f"{self.uri} holds no Parquet parts (part-*.parquet)")
        return self.part_metadata(paths[0])

    def part_metadata(self, path: str) -> dict[str, Any]:
        """The workload's JSON metadata of the part at `path` (from its footer)."""
        import pyarrow.parquet as pq

        with self.loc.fs.open_input_file(path) as f:
            meta = pq.read_schema(f).metadata or {}
        if METADATA_KEY not in meta:
            raise UserError(f"{path} has no raygen metadata; it was not written by raygen")
        return json.loads(meta[METADATA_KEY])

    def dataset(self):
        """A pyarrow Dataset over exactly the part files (stray files are not read)."""
        import pyarrow.dataset as pads

        return pads.dataset(self.part_paths(), filesystem=self.loc.fs, format="parquet")

    def ray_dataset(self, columns: list[str] | None = None):
        """A Ray Dataset streaming the part files."""
        import ray

        return ray.data.read_parquet(self.part_paths(), filesystem=self.loc.fs, columns=columns)

    def read_first(self, limit: int, columns: list[str] | None = None):
        """The first `limit` rows in id order (parts in chunk order, read 8 at a time: on an object
        store each part costs a few requests' latency, which threads overlap)."""
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow as pa
        import pyarrow.parquet as pq

        def read(path: str):
            with self.loc.fs.open_input_file(path) as f:
                return pq.read_table(f, columns=columns)

        paths = self.part_paths()
        tables, taken = [], 0
        with ThreadPoolExecutor(8) as pool:
            for start in range(0, len(paths), 8):
                for table in pool.map(read, paths[start:start + 8]):
                    if taken < limit:
                        tables.append(table.slice(0, limit - taken))
                        taken += len(tables[-1])
                if taken >= limit:
                    break
        if not tables:
            raise UserError(f"{self.uri} holds no Parquet parts (part-*.parquet)")
        return pa.concat_tables(tables)


def _id_statistics(metadata, column: str) -> tuple[int, int, int] | None:
    """(rows, min id, max id) over all row groups from the footer, or None without statistics."""
    rows, low, high = metadata.num_rows, None, None
    if rows == 0:
        return 0, 0, -1
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        index = next((j for j in range(group.num_columns) if group.column(j).path_in_schema == column), None)
        if index is None:
            raise KeyError(f"no column {column!r}")
        stats = group.column(index).statistics
        if group.num_rows == 0:
            continue
        if stats is None or not stats.has_min_max:
            return None
        low = stats.min if low is None else min(low, stats.min)
        high = stats.max if high is None else max(high, stats.max)
    return rows, int(low), int(high)
