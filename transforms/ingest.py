"""The ingest stage: raw tunes -> cleaned, transposed, tokenized, deduplicated rows.

``tokenize_record`` is the pure per-tune function (no Beam); ``IngestTunes`` wraps it, with
rejects on a tagged output and duplicates kept once. ``WriteTable`` writes any table of
``schemas.tables`` as Parquet shards, atomically and deterministically.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from folkrnn.schemas.files import atomic_write
from folkrnn.schemas.tables import FINDINGS
from folkrnn.schemas.vocab import METER_TOKENS, MODE_TOKENS, TOKEN_TO_ID
from folkrnn.transforms.abc.errors import TuneRejected
from folkrnn.transforms.abc.tokenize import Tokenized, tokenize_tune
from folkrnn.transforms.records import RawTune, reject_row
from folkrnn.transforms.validate import validate_tokens

REJECTS = "rejects"
DUPLICATES = "duplicates"

# Set by the CLI to show progress when the runner executes in this process; None elsewhere.
PROGRESS = None


def split_of(tune_id: str, valid_fraction: float) -> str:
    """A deterministic train/valid split from a hash of the id (same id, same split, any runner)."""
    fraction = int(hashlib.sha256(tune_id.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    return "valid" if fraction < valid_fraction else "train"


def _tokenize_folkrnn_block(raw: RawTune) -> Tokenized:
    tokens = raw.text.split()
    unknown = [t for t in tokens if t not in TOKEN_TO_ID]
    if unknown:
        raise TuneRejected("tokenize", "token_not_in_vocab",
                           f"tokens not in the v2 vocabulary: {' '.join(sorted(set(unknown))[:10])}")
    if len(tokens) < 3 or tokens[0] not in METER_TOKENS or tokens[1] not in MODE_TOKENS:
        raise TuneRejected("header", "missing_header", "a folk-rnn tune starts with an M: and a K: token")
    return Tokenized(tokens=tokens, meter=tokens[0][2:], mode=tokens[1][3:], transpose=0,
                     original_meter=tokens[0][2:], original_key=tokens[1][2:], meter_mapped=False, title=None)


def tokenize_record(raw: RawTune, valid_fraction: float = 0.05) -> dict:
    """A tunes-table row for one raw tune; raises TuneRejected saying why it cannot be one."""
    if raw.meta.get("format") == "folkrnn-text":
        result = _tokenize_folkrnn_block(raw)
    else:
        result = tokenize_tune(raw.text)
    tune_id = raw.id
    return {
        "id": tune_id,
        "source": raw.source,
        "collection": raw.collection,
        "position": raw.position,
        "title": raw.title or result.title,
        "original_meter": result.original_meter,
        "original_key": result.original_key,
        "meter_mapped": result.meter_mapped,
        "transpose": result.transpose,
        "meter": result.meter,
        "mode": result.mode,
        "tokens": result.tokens,
        "token_ids": [TOKEN_TO_ID[t] for t in result.tokens],
        "length": len(result.tokens),
        "content_hash": result.content_hash,
        "split": split_of(tune_id, valid_fraction),
        "encoding": raw.encoding,
        "removed": sorted(result.removed.items()),
        **findings_columns(result.tokens),
    }


def findings_columns(tokens: list[str], truncated: bool = False) -> dict:
    """The validator's verdict as the FINDINGS columns of folkrnn.schemas.tables."""
    row = validate_tokens(tokens, truncated=truncated).as_row()
    return {f.name: row[f.name] for f in FINDINGS}


def process_record(raw: RawTune, valid_fraction: float = 0.05) -> tuple[str, dict]:
    """("tune", row) or ("reject", row): never raises, whatever the text."""
    try:
        return "tune", tokenize_record(raw, valid_fraction)
    except TuneRejected as err:
        stage, reason, detail = err.stage, err.reason, err.detail
    except Exception as err:  # a bug must not lose the record: it becomes a reject that says so
        stage, reason, detail = "tokenize", "internal_error", f"{type(err).__name__}: {err}"
    return "reject", reject_row(collection=raw.collection, source=raw.source, position=raw.position,
                                stage=stage, reason=reason, detail=detail, raw=raw.text)


class _Tokenize(beam.DoFn):
    def __init__(self, valid_fraction: float):
        self.valid_fraction = valid_fraction
        self.kept = Metrics.counter("ingest", "tokenized")

    def process(self, raw: RawTune) -> Iterator:
        kind, row = process_record(raw, self.valid_fraction)
        if PROGRESS is not None:
            PROGRESS.update(1)
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
        content_hash, rows = element
        ordered = sorted(rows, key=lambda r: r["id"])
        yield ordered[0]
        for row in ordered[1:]:
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput(DUPLICATES, {
                "id": row["id"], "source": row["source"], "collection": row["collection"],
                "position": row["position"], "duplicate_of": ordered[0]["id"], "content_hash": content_hash,
            })


class IngestTunes(beam.PTransform):
    """RawTune records -> {"tunes": tune rows, "duplicates": duplicate rows, "rejects": reject rows}.

    Each record is cleaned, its key and meter mapped onto the vocabulary, transposed to C and
    tokenized (folkrnn.schemas.tables.TUNES rows). A record that cannot be is a reject row with a reason;
    tunes with the same token sequence are kept once and the rest are duplicate rows. Every input
    record leaves as exactly one row of the three outputs.
    """

    def __init__(self, valid_fraction: float = 0.05):
        super().__init__()
        self.valid_fraction = valid_fraction

    def expand(self, raw_tunes):
        tokenized = raw_tunes | "CleanTransposeTokenize" >> beam.ParDo(
            _Tokenize(self.valid_fraction)).with_outputs(REJECTS, main="tunes")
        kept = (
            tokenized.tunes
            | "KeyByContent" >> beam.Map(lambda row: (row["content_hash"], row))
            | "GroupSameTokens" >> beam.GroupByKey()
            | "KeepFirstOfEach" >> beam.ParDo(_KeepFirst()).with_outputs(DUPLICATES, main="tunes")
        )
        return {"tunes": kept.tunes, DUPLICATES: kept[DUPLICATES], REJECTS: tokenized[REJECTS]}


# -- writing tables --------------------------------------------------------------------------

def shard_of(row_id: str, num_shards: int) -> int:
    return zlib.crc32(row_id.encode("utf-8")) % num_shards


def shard_path(directory: str, name: str, shard: int, num_shards: int) -> str:
    return FileSystems.join(directory, name, f"part-{shard:05d}-of-{num_shards:05d}.parquet")


def replace_atomically(path: str, data: bytes) -> None:
    """Write to a temporary name, then rename: readers never see half a file (any Beam filesystem)."""
    atomic_write(path, data)


def write_parquet_atomic(path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    replace_atomically(path, buffer.getvalue())


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, name: str, schema: pa.Schema, num_shards: int):
        self.directory, self.name, self.schema, self.num_shards = directory, name, schema, num_shards

    def process(self, element) -> Iterator[str]:
        shard, grouped = element
        rows = sorted(grouped["rows"], key=lambda r: r["id"])
        path = shard_path(self.directory, self.name, shard, self.num_shards)
        write_parquet_atomic(path, pa.Table.from_pylist(rows, schema=self.schema))
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


# -- the summary -----------------------------------------------------------------------------

# Events the summary counts: tuples, so a name holding any character (a folder "pipe|coll") stays whole.
#   ("read", collection)                 a record came in
#   ("kept", collection, meter, mode)    ("duplicate", collection)    ("rejected", collection, reason)
#   ("repeated", path)                   a source named once more than needed (read once all the same)
#   ("folkrnn_text", source)             a tune of a file recognised as folk-rnn text by its layout


def outcome_events(kind: str):
    """Row -> a small tuple the summary combiner counts."""
    def event(row: dict) -> tuple:
        if kind == "tunes":
            return ("kept", row["collection"], row["meter"], row["mode"])
        if kind == "rejects":
            return ("rejected", row["collection"], row["reason"])
        return ("duplicate", row["collection"])
    return event


class SummaryFn(beam.CombineFn):
    """Counts of read, kept, duplicate and rejected records, by collection, reason, meter and mode."""

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
        summary: dict = {"read": 0, "kept": 0, "duplicates": 0, "rejected": 0, "rejects_by_reason": Counter(),
                         "by_collection": {}, "meters": Counter(), "modes": Counter(),
                         "repeated_sources": {}, "read_as_folkrnn_text": {}}
        for key, count in acc.items():
            kind, collection, *rest = key
            if kind == "repeated":  # named count + 1 times, read once
                summary["repeated_sources"][collection] = count + 1
                continue
            if kind == "folkrnn_text":
                summary["read_as_folkrnn_text"][collection] = count
                continue
            per = summary["by_collection"].setdefault(
                collection, {"read": 0, "kept": 0, "duplicates": 0, "rejected": 0})
            total = {"read": "read", "kept": "kept", "duplicate": "duplicates", "rejected": "rejected"}[kind]
            summary[total] += count
            per[total] += count
            if kind == "kept":
                summary["meters"][rest[0]] += count
                summary["modes"][rest[1]] += count
            elif kind == "rejected":
                summary["rejects_by_reason"][rest[0]] += count
        for name in ("rejects_by_reason", "meters", "modes"):
            # most common first; ties by name, so the file is the same whatever order events came in
            summary[name] = dict(sorted(summary[name].items(), key=lambda item: (-item[1], item[0])))
        for name in ("by_collection", "repeated_sources", "read_as_folkrnn_text"):
            summary[name] = dict(sorted(summary[name].items()))
        return summary


def write_json_atomic(path: str, value: dict) -> None:
    replace_atomically(path, json.dumps(value, indent=2).encode("utf-8"))
