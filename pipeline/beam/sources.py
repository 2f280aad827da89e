"""Sources of the ingest on Beam: ``ReadSources`` yields the raw tune records of every source.

Each source becomes read tasks (a file, a byte range of a large file, a scraped page, or a reject
row found before reading), and one step reads them all: ``RawTune`` records on its main output and
reject rows (``folkrnn.schemas.tables.REJECTS``) on the tagged output ``rejects``, so a pattern that
matches nothing or a file that cannot be read is counted, never lost. Files are read on any Beam
filesystem (local, ``gs://`` ...) and parsed by the pure functions of ``folkrnn.transforms.sources``;
files larger than the split size are surveyed and read in byte ranges by several workers
(``folkrnn.transforms.byte_ranges``), with the very records a whole read gives.

Matching is a small step of its own rather than ``fileio.MatchAll``: MatchAll drops which pattern
matched nothing, and such a pattern must leave a ``no_match`` reject row; a folder stands for every
file under it, and local paths are made canonical so that a file is read once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from folkrnn.transforms.byte_ranges import SPLIT_SIZE, ByteRange, file_reader, records_of_range, survey
from folkrnn.transforms.records import RawTune, reject_row
from folkrnn.transforms.sources import (
    canonical_source,
    collection_of,
    file_stem,
    is_local,
    music21_abc_paths,
    records_of_file,
    records_of_folkrnn_text,
    rows_of_dump,
    tunes_of_document,
)

REJECTS = "rejects"
REPEATED = "repeated"  # a file named more than once: its path, once per extra naming
TASKS = "tasks"

TABULAR_SUFFIXES = (".csv", ".json", ".jsonl")  # dumps are recognised by suffix

Parse = Callable[[str, str, bytes], Iterable]  # (path, collection, data) -> RawTune records or reject rows


@dataclass
class IngestPlan:
    """What to read: sorted out by kind, so each goes to its own source transform."""

    abc: list[str] = field(default_factory=list)
    folkrnn_text: list[str] = field(default_factory=list)
    dumps: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)  # a source named again: once per extra naming

    @property
    def empty(self) -> bool:
        return not (self.abc or self.folkrnn_text or self.dumps or self.urls)


def plan_sources(sources: Sequence[str], fmt: str = "abc", url_lists: Sequence[str] = ()) -> IngestPlan:
    """Sources sorted by kind; local paths canonical, each read once however often it is named."""
    from folkrnn.transforms.scrape import read_url_list

    plan = IngestPlan()
    seen: set[str] = set()
    for source in sources:
        if source.startswith(("http://", "https://")):
            plan.urls.append(source)
            continue
        source = canonical_source(source)
        if source in seen:
            plan.repeated.append(source)
            continue
        seen.add(source)
        if source.lower().endswith(TABULAR_SUFFIXES):
            plan.dumps.append(source)
        elif fmt == "folkrnn-text":
            plan.folkrnn_text.append(source)
        else:
            plan.abc.append(source)
    for url_list in url_lists:
        plan.urls.extend(read_url_list(url_list))
    return plan


def match_pattern(pattern: str) -> Iterator:
    """FileMetadata of the files matching a path, folder or glob; a ``no_match`` reject task if none."""
    is_glob = any(ch in pattern for ch in "*?[")
    if not is_glob and (pattern.endswith("/") or os.path.isdir(pattern)):
        pattern = FileSystems.join(pattern.rstrip("/"), "**")
    try:
        matches, error = FileSystems.match([pattern])[0].metadata_list, ""
    except Exception as err:  # a bad pattern is a reject, not a crash
        matches, error = [], f": {err}"
    found = sorted(
        (FileMetadata(canonical_source(m.path) if is_local(m.path) else m.path, m.size_in_bytes)
         for m in matches if not m.path.endswith("/") and not os.path.isdir(m.path)),
        key=lambda m: m.path)
    if not found:
        yield beam.pvalue.TaggedOutput(TASKS, reject_task(reject_row(
            collection="input", source=pattern, position=0, stage="read", reason="no_match",
            detail=f"nothing matches {pattern}{error}")))
    yield from found


# -- read tasks --------------------------------------------------------------------------------
# Every source becomes small read tasks, and one step reads them all: so every record and reject
# row comes out of that one step, where the records are processed as they come. (The local
# runners hold in memory what passes from one step to another through a Flatten or a GroupByKey:
# only small things may.)
#   ("file", (path, collection, kind))  a file read whole, kind "abc", "dump" or "folkrnn"
#   ("range", ByteRange)                 a byte range of a large file
#   ("document", doc)                    a scraped page
#   ("reject", row)                      a reject row found before reading

Task = tuple[str, object]
PARSERS: dict[str, Parse] = {"abc": tunes_of_document, "dump": rows_of_dump, "folkrnn": records_of_folkrnn_text}


def reject_task(row: dict) -> Task:
    return ("reject", row)


def survey_file(metadata: FileMetadata, collection: str, kind: str, split_size: int) -> Iterator[Task]:
    """A file's read tasks: the file whole when it is at most ``split_size`` bytes (or cannot be
    split: compressed, a JSON array), else its byte ranges, or the reject row that stands for it."""
    path, size = metadata.path, metadata.size_in_bytes
    if not split_size or size <= split_size or _compressed(path):
        yield ("file", (path, collection, kind))
        return
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            found = survey(path, collection, kind, size, file_reader(handle), split_size)
    except Exception as err:  # any I/O failure becomes a reject row
        yield reject_task(_unreadable(collection, path, err))
        return
    Metrics.counter("ingest", "files_surveyed").inc()
    if not found.splittable:
        yield ("file", (path, collection, kind))
    elif found.reject is not None:
        yield reject_task(found.reject)
    for task in found.ranges:
        yield ("range", task)


def _compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def _unreadable(collection: str, path: str, err: Exception) -> dict:
    return reject_row(collection=collection, source=path, position=0, stage="read", reason="unreadable",
                      detail=f"cannot read {path}: {err}")


def read_task(task: Task) -> Iterator:
    """One read task's RawTune records (main output) and reject rows (``rejects``)."""
    kind, payload = task
    if kind == "reject":
        records: Iterable = [payload]
    elif kind == "file":
        records = read_file(*payload)
    elif kind == "range":
        records = read_range(payload)
    else:
        records = split_document(payload)
    for record in records:
        yield record if isinstance(record, RawTune) else beam.pvalue.TaggedOutput(REJECTS, record)


def read_file(path: str, collection: str, kind: str) -> Iterator[RawTune | dict]:
    """A whole file's records; an unreadable file is an ``unreadable`` reject row and the run goes on."""
    try:
        with FileSystems.open(path) as handle:  # compressed files (.gz ...) are read decompressed
            data = handle.read()
    except Exception as err:  # any I/O failure becomes a reject row
        yield _unreadable(collection, path, err)
        return
    Metrics.counter("ingest", "files_read").inc()
    yield from records_of_file(path, collection, data, PARSERS[kind])


def read_range(task: ByteRange) -> Iterator[RawTune | dict]:
    """One byte range's records."""
    try:
        handle = FileSystems.open(task.path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as err:  # any I/O failure becomes a reject row
        yield _unreadable(task.collection, task.path, err)
        return
    with handle:
        yield from records_of_range(task, file_reader(handle))
    Metrics.counter("ingest", "ranges_read").inc()


def split_document(doc: dict) -> Iterator[RawTune | dict]:
    """A scraped document -> its RawTune records and reject rows."""
    yield from tunes_of_document(doc["source"], doc["collection"], doc["text"].encode("utf-8"), doc["encoding"])


class _SurveyFiles(beam.PTransform):
    """File metadata -> read tasks (``survey_file``)."""

    def __init__(self, collection_for: Callable[[str], str], kind: str, split_size: int = SPLIT_SIZE):
        super().__init__()
        self.collection_for, self.kind, self.split_size = collection_for, kind, split_size

    def expand(self, metadata):
        collection_for, kind, split_size = self.collection_for, self.kind, self.split_size
        return (
            metadata
            | "SpreadFiles" >> beam.Reshuffle()
            | "Survey" >> beam.FlatMap(lambda m: survey_file(m, collection_for(m.path), kind, split_size))
        )


class AbcFileTasks(beam.PTransform):
    """ABC files, folders and globs -> {"tasks": read tasks, "repeated": paths matched again}.

    Each file is split into tunes at ``X:`` (and at blank-line separated tunes without one),
    each tune inheriting the file header's fields; a file laid out as folk-rnn text is read as
    such. A file matched more than once is read once (``repeated`` says which). Works on every
    Beam filesystem.
    """

    def __init__(self, patterns: Iterable[str], collection: str | None = None, split_size: int = SPLIT_SIZE):
        super().__init__()
        self.patterns = list(patterns)
        self.collection = collection
        self.split_size = split_size

    def expand(self, pbegin):
        matched = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "MatchPatterns" >> beam.FlatMap(match_pattern).with_outputs(TASKS, main="files")
        )
        counted = (
            matched.files
            | "PathAndSize" >> beam.Map(lambda m: (m.path, m.size_in_bytes))
            | "CountEachFile" >> beam.combiners.Count.PerElement()
        )
        repeated = counted | "RepeatedFiles" >> beam.FlatMap(lambda item: [item[0][0]] * (item[1] - 1))
        collection = self.collection
        tasks = (
            counted
            | "EachFileOnce" >> beam.Map(lambda item: FileMetadata(*item[0]))
            | "Survey" >> _SurveyFiles(lambda path: collection or collection_of(path), "abc", self.split_size)
        )
        return {"tasks": (tasks, matched[TASKS]) | "AbcTasks" >> beam.Flatten(), REPEATED: repeated}


class _FilesAsCollectionsTasks(beam.PTransform):
    """Files -> read tasks, each file one collection named after it."""

    kind: str

    def __init__(self, paths: Iterable[str], split_size: int = SPLIT_SIZE):
        super().__init__()
        self.paths = list(paths)
        self.split_size = split_size

    def expand(self, pbegin):
        return (
            pbegin
            | "Paths" >> beam.Create(self.paths)
            | "Sizes" >> beam.Map(metadata_of)
            | "Survey" >> _SurveyFiles(file_stem, type(self).kind, self.split_size)
        )


def metadata_of(path: str) -> FileMetadata:
    """A path's FileMetadata (size 0 when it cannot be found: reading it then says why)."""
    try:
        found = FileSystems.match([path])[0].metadata_list
    except Exception:  # noqa: BLE001 - the read that follows reports the file
        found = []
    return FileMetadata(path, found[0].size_in_bytes if found else 0)


class DumpTasks(_FilesAsCollectionsTasks):
    """CSV/JSON dumps (``tune_id, setting_id, name, type, meter, mode, abc``) -> read tasks."""

    kind = "dump"


class FolkRnnTextTasks(_FilesAsCollectionsTasks):
    """folk-rnn text files (an M: line, a K: line, a line of tokens per tune) -> read tasks."""

    kind = "folkrnn"


class ReadSources(beam.PTransform):
    """PBegin -> {"tunes": RawTune records, "rejects": reject rows, "repeated": paths named again}.

    Every source of an ``IngestPlan``: ABC files, dumps, folk-rnn text, scraped URLs (with the
    scraper's politeness, cache and deadline settings), and music21's corpus when the plan is empty.
    Records and reject rows all come out of one step ("ReadTasks"), so that what follows runs in
    the same step as they come, and files larger than ``split_size`` bytes are read in byte ranges
    by several workers at once (``folkrnn.transforms.byte_ranges``), with the same records.
    """

    def __init__(self, plan: IngestPlan, *, cache_dir: str, delay: float = 1.0, per_host: int = 1,
                 timeout: float = 30.0, follow_offsite: bool = False, split_size: int = SPLIT_SIZE):
        super().__init__()
        self.plan = plan
        self.split_size = split_size
        self.scraping = {"cache_dir": cache_dir, "delay": delay, "per_host_concurrency": per_host,
                         "timeout": timeout, "follow_offsite": follow_offsite}

    def expand(self, pbegin):
        plan, split_size = self.plan, self.split_size
        tasks, repeated = [], [pbegin | "RepeatedSources" >> beam.Create(plan.repeated)]
        abc = music21_abc_paths() if plan.empty else plan.abc  # nothing named: music21's ABC collections
        if abc:
            found = pbegin | "AbcFiles" >> AbcFileTasks(abc, split_size=split_size)
            tasks.append(found["tasks"])
            repeated.append(found[REPEATED])
        if plan.dumps:
            tasks.append(pbegin | "TabularDumps" >> DumpTasks(plan.dumps, split_size))
        if plan.folkrnn_text:
            tasks.append(pbegin | "FolkRnnText" >> FolkRnnTextTasks(plan.folkrnn_text, split_size))
        if plan.urls:
            from folkrnn.pipeline.beam.scrape import ScrapeAbc

            scraped = pbegin | "Urls" >> beam.Create(sorted(set(plan.urls))) | "Scrape" >> ScrapeAbc(**self.scraping)
            tasks.append(scraped.documents | "DocumentTasks" >> beam.Map(lambda doc: ("document", doc)))
            tasks.append(scraped.rejects | "ScrapeRejectTasks" >> beam.Map(reject_task))
        read = (
            tasks
            | "AllTasks" >> beam.Flatten()
            | "SpreadTasks" >> beam.Reshuffle()
            | "ReadTasks" >> beam.FlatMap(read_task).with_outputs(REJECTS, main="tunes")
        )
        return {"tunes": read.tunes, REJECTS: read[REJECTS], REPEATED: repeated | "AllRepeated" >> beam.Flatten()}
