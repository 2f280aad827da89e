"""The ingest stage on Beam: raw tunes -> tune, duplicate and reject rows -> Parquet tables.

``IngestTunes`` wraps the pure per-tune function (``folkrnn.transforms.ingest.process_record``), with
rejects on a tagged output and duplicates kept once; ``WriteTable`` writes any table of
``folkrnn.schemas.tables`` as Parquet shards, atomically and deterministically, in bounded memory
(through sorted runs on disk: ``folkrnn.pipeline.sorted_runs``); ``SummaryFn`` counts what came in
and what went out. No step holds all tunes: the local runners keep whatever goes through a
GroupByKey in memory, so only small packed keys do.
"""

from __future__ import annotations

import pickle
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from folkrnn.pipeline.beam.progress import LocalProgress
from folkrnn.pipeline.sorted_runs import Run, RunWriter, merge_runs, write_sorted_table
from folkrnn.schemas import files
from folkrnn.transforms.ingest import (
    DUPLICATES,
    REJECTS,
    dedup_key,
    keep_first,
    process_record,
    shard_name,
    summary_of,
)
from folkrnn.transforms.records import RawTune


class _Tokenize(beam.DoFn):
    def __init__(self, valid_fraction: float, progress: LocalProgress | None):
        self.valid_fraction, self.progress = valid_fraction, progress
        self.kept = Metrics.counter("ingest", "tokenized")

    def process(self, raw: RawTune) -> Iterator:
        kind, row = process_record(raw, self.valid_fraction)
        if self.progress is not None:
            self.progress.update(1)
        if kind == "tune":
            self.kept.inc()
            yield row
        else:
            Metrics.counter("ingest_rejects", row["reason"]).inc()
            yield beam.pvalue.TaggedOutput(REJECTS, row)


# Duplicates are told apart by content hash. Grouping one small key per tune would still leave
# millions of groups, which the local runners hold as Python objects; so keys go to a fixed number
# of buckets (by hash), each worker sends them on packed (pickled lists, about 43 bytes a key), and
# each bucket is sorted out on its own.
DEDUP_BUCKETS = 1024
DEDUP_PACK = 20_000  # keys gathered by one worker before they are sent on, packed per bucket


def bucket_of(digest: bytes) -> int:
    return int.from_bytes(digest[:4], "big") % DEDUP_BUCKETS


class _PackDedupKeys(beam.DoFn):
    """Tune rows -> (bucket, pickled list of dedup keys)."""

    def start_bundle(self) -> None:
        self.buckets: dict[int, list] = {}
        self.gathered = 0

    def process(self, row: dict) -> Iterator[tuple[int, bytes]]:
        key = dedup_key(row)
        self.buckets.setdefault(bucket_of(key[0]), []).append(key)
        self.gathered += 1
        if self.gathered >= DEDUP_PACK:
            yield from self._packed()

    def finish_bundle(self) -> Iterator:
        for item in self._packed():
            yield GlobalWindows.windowed_value(item)

    def _packed(self) -> Iterator[tuple[int, bytes]]:
        buckets, self.buckets, self.gathered = self.buckets, {}, 0
        for bucket, keys in buckets.items():
            yield bucket, pickle.dumps(keys, protocol=pickle.HIGHEST_PROTOCOL)


class _KeepFirstInBucket(beam.DoFn):
    """(bucket, packs) -> the kept tune of each content hash (id, collection, meter, mode), and
    duplicate rows (tagged) for the others: the one with the smallest id is kept."""

    def __init__(self):
        self.duplicates = Metrics.counter("ingest", "duplicates")

    def process(self, element: tuple[int, Iterable[bytes]]) -> Iterator:
        by_hash: dict[bytes, list] = {}
        for pack in element[1]:
            for key in pickle.loads(pack):
                by_hash.setdefault(key[0], []).append(key)
        for digest in sorted(by_hash):
            kept, duplicates = keep_first(by_hash[digest])
            yield kept
            for row in duplicates:
                self.duplicates.inc()
                yield beam.pvalue.TaggedOutput(DUPLICATES, row)


class IngestTunes(beam.PTransform):
    """RawTune records -> {"tunes": tune rows, "kept": kept tunes, "duplicates": duplicate rows,
    "rejects": reject rows}.

    Each record is cleaned, its key and meter mapped onto the vocabulary, transposed to C and
    tokenized (``folkrnn.schemas.tables.TUNES`` rows, on "tunes"). A record that cannot be is a
    reject row with a reason. Tunes with the same token sequence are kept once: "kept" has the id,
    collection, meter and mode of each tune kept, "duplicates" a row for each of the others, so
    the tunes table is "tunes" without the ids of "duplicates" (``WriteTable(exclude=...)``). Every
    input record leaves as exactly one row of "kept", "duplicates" or "rejects". ``progress``
    counts records when the runner executes in this process.
    """

    def __init__(self, valid_fraction: float = 0.05, progress: LocalProgress | None = None):
        super().__init__()
        self.valid_fraction, self.progress = valid_fraction, progress

    def expand(self, raw_tunes):
        tokenized = raw_tunes | "CleanTransposeTokenize" >> beam.ParDo(
            _Tokenize(self.valid_fraction, self.progress)).with_outputs(REJECTS, main="tunes")
        kept = (
            tokenized.tunes
            | "PackKeysByHash" >> beam.ParDo(_PackDedupKeys())
            | "GroupBuckets" >> beam.GroupByKey()
            | "KeepFirstOfEach" >> beam.ParDo(_KeepFirstInBucket()).with_outputs(DUPLICATES, main="kept")
        )
        return {"tunes": tokenized.tunes, "kept": kept.kept, DUPLICATES: kept[DUPLICATES],
                REJECTS: tokenized[REJECTS]}


# -- tables ----------------------------------------------------------------------------------

SCRATCH = ".runs"  # under the output folder: sorted runs on their way into the tables


class _WriteRuns(beam.DoFn):
    def __init__(self, directory: str, schema: pa.Schema, num_shards: int):
        self.directory, self.schema, self.num_shards = directory, schema, num_shards

    def start_bundle(self) -> None:
        self.writer = RunWriter(self.directory, self.schema, self.num_shards)

    def process(self, row: dict) -> Iterator[Run]:
        yield from self.writer.add(row)

    def finish_bundle(self) -> Iterator:
        for run in self.writer.flush():
            yield GlobalWindows.windowed_value(run)


class WriteRuns(beam.PTransform):
    """Rows (dicts) -> (shard, path) of the sorted run files they were written to (``sorted_runs``)."""

    def __init__(self, directory: str, schema: pa.Schema, num_shards: int = 1):
        super().__init__()
        self.directory, self.schema, self.num_shards = directory, schema, num_shards

    def expand(self, rows):
        return rows | "SortedRuns" >> beam.ParDo(_WriteRuns(self.directory, self.schema, self.num_shards))


class _MergeShard(beam.DoFn):
    def __init__(self, directory: str, name: str, schema: pa.Schema, num_shards: int):
        self.directory, self.name, self.schema, self.num_shards = directory, name, schema, num_shards

    def process(self, shard: int, runs: list[Run], exclude: list[Run]) -> Iterator[str]:
        paths = [path for s, path in runs if s == shard]
        excluded = [path for s, path in exclude if s == shard]
        files.makedirs(files.join(self.directory, self.name))
        path = files.join(self.directory, self.name, shard_name(shard, self.num_shards))
        rows = write_sorted_table(path, self.schema, merge_runs(paths, self.schema, excluded))
        Metrics.counter("ingest_rows", self.name).inc(rows)
        yield path


class MergeRuns(beam.PTransform):
    """Runs -> ``DIR/NAME/part-SSSSS-of-NNNNN.parquet``: each shard's runs merged, sorted by id,
    without the ids in the runs ``exclude`` (a PCollection of runs, or None). Every shard is
    written, empty or not, and each file appears only once complete. Outputs the paths written."""

    def __init__(self, directory: str, name: str, schema: pa.Schema, num_shards: int = 1, exclude=None):
        super().__init__()
        self.directory, self.name, self.schema, self.num_shards = directory, name, schema, num_shards
        self.exclude = exclude

    def expand(self, runs):
        pipeline = runs.pipeline
        exclude = self.exclude if self.exclude is not None else pipeline | "NothingExcluded" >> beam.Create([])
        return (
            pipeline
            | "ShardIds" >> beam.Create(list(range(self.num_shards)))
            | "MergeShard" >> beam.ParDo(_MergeShard(self.directory, self.name, self.schema, self.num_shards),
                                         runs=beam.pvalue.AsList(runs), exclude=beam.pvalue.AsList(exclude))
        )


class WriteTable(beam.PTransform):
    """Rows (dicts; a PCollection or a tuple of them) -> ``DIR/NAME/part-SSSSS-of-NNNNN.parquet``
    files with the given schema.

    Rows are spread over shards by a hash of their id and sorted by id inside each shard, so the
    same rows give the same files on any runner; every shard is written, empty or not, and each
    file appears only once complete. Any number of rows in bounded memory: they pass through
    sorted runs in ``DIR/.runs/NAME`` (``RemoveScratch`` removes them at the end), written in the
    step that makes the rows (rows from several steps are not flattened first: the local runners
    would hold them all in memory on the way). Outputs {"written": the paths written, "runs": the
    runs}; ``exclude``: runs whose ids are left out.
    """

    def __init__(self, directory: str, name: str, schema: pa.Schema, num_shards: int = 1, exclude=None):
        super().__init__()
        self.directory, self.name, self.schema, self.num_shards = directory, name, schema, num_shards
        self.exclude = exclude

    def expand(self, rows):
        scratch = files.join(self.directory, SCRATCH, self.name)
        parts = rows if isinstance(rows, (tuple, list)) else (rows,)
        runs = [part | f"Runs{i}" >> WriteRuns(scratch, self.schema, self.num_shards) for i, part in enumerate(parts)]
        runs = runs | "AllRuns" >> beam.Flatten()
        written = runs | "Merge" >> MergeRuns(self.directory, self.name, self.schema, self.num_shards,
                                              exclude=self.exclude)
        return {"written": written, "runs": runs}


def remove_folder(path: str) -> None:
    """Remove a folder and what it holds (on an object store: every object under it)."""
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)
        return
    found = [m.path for m in FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list]
    if found:
        FileSystems.delete(found)


class RemoveScratch(beam.PTransform):
    """Paths written -> nothing: once every table is written, ``DIR/.runs`` is removed."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def expand(self, written):
        scratch = files.join(self.directory, SCRATCH)
        return (
            written
            | "AllWritten" >> beam.combiners.Count.Globally()
            | "RemoveRuns" >> beam.Map(lambda _: remove_folder(scratch))
        )


class SummaryFn(beam.CombineFn):
    """(event, count) pairs (events: ``folkrnn.transforms.ingest``) -> the summary: read, kept,
    duplicate and rejected records by collection, reason, meter and mode."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, counted: tuple) -> Counter:
        event, count = counted
        acc[tuple(event)] += count
        return acc

    def merge_accumulators(self, accumulators: Iterable[Counter]) -> Counter:
        total: Counter = Counter()
        for acc in accumulators:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict:
        return summary_of(acc)
