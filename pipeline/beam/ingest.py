"""The ingest stage on Beam: raw tunes -> tune, duplicate and reject rows -> Parquet tables.

``IngestTunes`` wraps the pure per-tune function (``folkrnn.transforms.ingest.process_record``), with
rejects on a tagged output and duplicates kept once; ``WriteTable`` writes any table of
``folkrnn.schemas.tables`` as Parquet shards, atomically and deterministically; ``SummaryFn`` counts
what came in and what went out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from folkrnn.pipeline.beam.progress import LocalProgress
from folkrnn.schemas import files
from folkrnn.transforms.ingest import (
    DUPLICATES,
    REJECTS,
    keep_first,
    process_record,
    shard_name,
    shard_of,
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


class _KeepFirst(beam.DoFn):
    """Of tunes with the same tokens, keep the smallest id; the others become duplicate rows."""

    def __init__(self):
        self.duplicates = Metrics.counter("ingest", "duplicates")

    def process(self, element: tuple[str, Iterable[dict]]) -> Iterator:
        kept, duplicates = keep_first(*element)
        yield kept
        for row in duplicates:
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput(DUPLICATES, row)


class IngestTunes(beam.PTransform):
    """RawTune records -> {"tunes": tune rows, "duplicates": duplicate rows, "rejects": reject rows}.

    Each record is cleaned, its key and meter mapped onto the vocabulary, transposed to C and
    tokenized (``folkrnn.schemas.tables.TUNES`` rows). A record that cannot be is a reject row with a
    reason; tunes with the same token sequence are kept once and the rest are duplicate rows. Every
    input record leaves as exactly one row of the three outputs. ``progress`` counts records when the
    runner executes in this process.
    """

    def __init__(self, valid_fraction: float = 0.05, progress: LocalProgress | None = None):
        super().__init__()
        self.valid_fraction, self.progress = valid_fraction, progress

    def expand(self, raw_tunes):
        tokenized = raw_tunes | "CleanTransposeTokenize" >> beam.ParDo(
            _Tokenize(self.valid_fraction, self.progress)).with_outputs(REJECTS, main="tunes")
        kept = (
            tokenized.tunes
            | "KeyByContent" >> beam.Map(lambda row: (row["content_hash"], row))
            | "GroupSameTokens" >> beam.GroupByKey()
            | "KeepFirstOfEach" >> beam.ParDo(_KeepFirst()).with_outputs(DUPLICATES, main="tunes")
        )
        return {"tunes": kept.tunes, DUPLICATES: kept[DUPLICATES], REJECTS: tokenized[REJECTS]}


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, name: str, schema: pa.Schema, num_shards: int):
        self.directory, self.name, self.schema, self.num_shards = directory, name, schema, num_shards

    def process(self, element) -> Iterator[str]:
        shard, grouped = element
        rows = sorted(grouped["rows"], key=lambda r: r["id"])
        path = files.join(self.directory, self.name, shard_name(shard, self.num_shards))
        files.write_parquet(path, pa.Table.from_pylist(rows, schema=self.schema))
        yield path


class WriteTable(beam.PTransform):
    """Rows (dicts) -> ``DIR/NAME/part-SSSSS-of-NNNNN.parquet`` files with the given schema.

    Rows are spread over shards by a hash of their id and sorted by id inside each shard, so the
    same rows give the same files on any runner; every shard is written, empty or not, and each
    file appears only once complete. Outputs the paths written.
    """

    def __init__(self, directory: str, name: str, schema: pa.Schema, num_shards: int = 1):
        super().__init__()
        self.directory, self.name, self.schema, self.num_shards = directory, name, schema, num_shards

    def expand(self, rows):
        n = self.num_shards
        keyed = rows | "KeyByShard" >> beam.Map(lambda row: (shard_of(row["id"], n), row))
        every_shard = rows.pipeline | "ShardIds" >> beam.Create([(i, None) for i in range(n)])
        return (
            {"rows": keyed, "shards": every_shard}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "WriteParquet" >> beam.ParDo(_WriteShard(self.directory, self.name, self.schema, n))
        )


class SummaryFn(beam.CombineFn):
    """Events (``folkrnn.transforms.ingest``) -> the summary: read, kept, duplicate and rejected
    records by collection, reason, meter and mode."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, event: tuple) -> Counter:
        acc[tuple(event)] += 1
        return acc

    def merge_accumulators(self, accumulators: Iterable[Counter]) -> Counter:
        total: Counter = Counter()
        for acc in accumulators:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict:
        return summary_of(acc)
