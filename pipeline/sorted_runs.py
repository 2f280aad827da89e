"""Tables of any size written sorted by id, in bounded memory (an external merge sort).

Rows are gathered as Arrow record batches. When the rows gathered reach ``RUN_BYTES`` they are
sorted by id and written out, one run per shard (an Arrow IPC file, lz4) in a scratch folder.
The runs of a shard are then merged, one record batch of each at a time, into the shard's
Parquet file, sorted by id: the same file whatever the number of runs, their order or the runner
(and, for a table of up to ``ROW_GROUP_ROWS`` rows, the very file one ``pq.write_table`` writes).
The merge can leave out the ids found in other runs (the tunes that are duplicates), read the
same way, so that no list of ids is held either.
"""

from __future__ import annotations

import heapq
import os
import uuid
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from folkrnn.schemas import files
from folkrnn.transforms.ingest import shard_of

RUN_BYTES = 32 * 2**20  # Arrow bytes gathered before they are sorted and written as runs
BATCH_ROWS = 256  # rows made into one record batch at a time (in runs, and read back so: a merge holds one of each run)
ROW_GROUP_ROWS = 8192  # rows merged, then written as one Parquet row group, at a time (larger: more memory)
RUN_SUFFIX = ".arrow"

Run = tuple[int, str]  # (shard, path of the run file)

def _create(path: str):
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, "wb")
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 - object stores only

    return FileSystems.create(path)


def _open(path: str) -> pa.NativeFile:
    if "://" not in path:
        return pa.OSFile(path)  # not memory-mapped: the pages read would count as this process's
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 - object stores only

    return pa.PythonFile(FileSystems.open(path), mode="r")


class RunWriter:
    """Rows (dicts with an ``id``) -> sorted run files, one per shard, of about ``run_bytes`` in all."""

    def __init__(self, directory: str, schema: pa.Schema, num_shards: int, run_bytes: int = RUN_BYTES):
        self.directory, self.schema, self.num_shards, self.run_bytes = directory, schema, num_shards, run_bytes
        self.pending: list[list[dict]] = [[] for _ in range(num_shards)]
        self.batches: list[list[pa.RecordBatch]] = [[] for _ in range(num_shards)]
        self.nbytes = 0

    def add(self, row: dict) -> list[Run]:
        """Take a row; returns the runs written if the rows gathered were written out now."""
        shard = shard_of(row["id"], self.num_shards)
        pending = self.pending[shard]
        pending.append(row)
        if len(pending) >= BATCH_ROWS:
            self._to_arrow(shard)
            if self.nbytes >= self.run_bytes:
                return self.flush()
        return []

    def _to_arrow(self, shard: int) -> None:
        batch = pa.RecordBatch.from_pylist(self.pending[shard], schema=self.schema)
        self.pending[shard] = []
        self.batches[shard].append(batch)
        self.nbytes += batch.nbytes

    def flush(self) -> list[Run]:
        """Write every row gathered (sorted by id, a run per shard); returns the runs written."""
        runs = []
        for shard in range(self.num_shards):
            if self.pending[shard]:
                self._to_arrow(shard)
            if self.batches[shard]:
                table = pa.Table.from_batches(self.batches[shard], schema=self.schema)
                self.batches[shard] = []
                runs.append((shard, self._write_run(table)))
        self.nbytes = 0
        return runs

    def _write_run(self, table: pa.Table) -> str:
        """The rows sorted by id, a batch at a time (no sorted copy of them all)."""
        path = files.join(self.directory, uuid.uuid4().hex + RUN_SUFFIX)
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        order = pc.sort_indices(table, sort_keys=[("id", "ascending")])
        try:
            with _create(path) as handle, pa.ipc.new_file(handle, self.schema, options=options) as writer:
                for start in range(0, len(order), BATCH_ROWS):
                    writer.write_table(table.take(order.slice(start, BATCH_ROWS)))
        except OSError as err:  # a full disk says nothing of the file: name it
            if err.filename == path:
                raise
            raise OSError(err.errno, err.strerror or str(err), path) from err
        return path


class _Cursor:
    """Reads one run a record batch at a time."""

    def __init__(self, path: str):
        self.reader = pa.ipc.open_file(_open(path))
        self.next_batch = 0
        self.batch: pa.RecordBatch | None = None
        self.ids: list[str] = []
        self.offset = 0
        self.base = 0  # where the batch starts among the batches of the rows being merged

    def load(self) -> bool:
        """Move to the next non-empty batch; False at the end of the run."""
        while self.next_batch < self.reader.num_record_batches:
            self.batch = self.reader.get_batch(self.next_batch)
            self.next_batch += 1
            if self.batch.num_rows:
                self.ids = self.batch.column("id").to_pylist()
                self.offset = 0
                return True
        self.batch, self.ids = None, []
        return False


def sorted_ids(paths: Iterable[str]) -> Iterator[str]:
    """The ids of runs, merged into one increasing sequence."""
    def ids_of(path: str) -> Iterator[str]:
        cursor = _Cursor(path)
        while cursor.load():
            yield from cursor.ids
    return heapq.merge(*(ids_of(p) for p in paths))


class _Excluded:
    """``in`` for ids asked in increasing order, against an increasing sequence of ids."""

    def __init__(self, ids: Iterator[str]):
        self.ids = ids
        self.current = next(ids, None)

    def __contains__(self, row_id: str) -> bool:
        while self.current is not None and self.current < row_id:
            self.current = next(self.ids, None)
        return self.current == row_id


def merge_runs(paths: Iterable[str], schema: pa.Schema, exclude: Iterable[str] = ()) -> Iterator[pa.Table]:
    """Tables of up to ``ROW_GROUP_ROWS`` rows: the rows of the runs in id order, without the ids
    in the runs ``exclude``. Holds one record batch of each run (and the rows of one table)."""
    excluded = _Excluded(sorted_ids(exclude))
    cursors = [c for c in (_Cursor(p) for p in sorted(paths)) if c.load()]
    pieces: list[pa.RecordBatch] = []
    size = 0

    def register(cursor: _Cursor) -> None:
        nonlocal size
        cursor.base = size
        pieces.append(cursor.batch)
        size += cursor.batch.num_rows

    for cursor in cursors:
        register(cursor)
    heap = [(cursor.ids[0], k) for k, cursor in enumerate(cursors)]
    heapq.heapify(heap)
    taken: list[int] = []
    while heap:
        row_id, k = heap[0]
        cursor = cursors[k]
        if row_id not in excluded:
            taken.append(cursor.base + cursor.offset)
        cursor.offset += 1
        if cursor.offset < len(cursor.ids):
            heapq.heapreplace(heap, (cursor.ids[cursor.offset], k))
        elif cursor.load():
            register(cursor)
            heapq.heapreplace(heap, (cursor.ids[0], k))
        else:
            heapq.heappop(heap)
        if len(taken) >= ROW_GROUP_ROWS or (not heap and taken):
            yield pa.Table.from_batches(pieces, schema=schema).take(pa.array(taken, pa.int64())).combine_chunks()
            taken, pieces, size = [], [], 0
            for _, live in heap:
                register(cursors[live])


def write_sorted_table(path: str, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """One Parquet file (zstd) of the tables in turn, atomically; returns the rows written."""
    rows = 0

    def write(handle) -> None:
        nonlocal rows
        with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table)
                rows += table.num_rows
            if not rows:
                writer.write_table(schema.empty_table())

    files.atomic_write(path, write)
    return rows
