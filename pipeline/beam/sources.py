"""Sources of the ingest on Beam: each a transform that yields raw tune records.

Every source emits ``RawTune`` records on its main output and reject rows
(``folkrnn.schemas.tables.REJECTS``) on the tagged output ``rejects``, so a pattern that matches
nothing or a file that cannot be read is counted, never lost. Files are read with Beam's
``fileio.ReadMatches`` on any Beam filesystem (local, ``gs://`` ...) and parsed by the pure
functions of ``folkrnn.transforms.sources``.

Matching is a small step of its own rather than ``fileio.MatchAll``: MatchAll drops which pattern
matched nothing, and such a pattern must leave a ``no_match`` reject row; a folder stands for every
file under it, and local paths are made canonical so that a file is read once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

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
    """FileMetadata of the files matching a path, folder or glob; a ``no_match`` reject if none."""
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
        yield beam.pvalue.TaggedOutput(REJECTS, reject_row(
            collection="input", source=pattern, position=0, stage="read", reason="no_match",
            detail=f"nothing matches {pattern}{error}"))
    yield from found


def read_file(readable: fileio.ReadableFile, collection_for: Callable[[str], str], parse: Parse) -> Iterator:
    """One file's records; an unreadable file is a ``unreadable`` reject row and the run goes on."""
    path = readable.metadata.path
    collection = collection_for(path)
    try:
        data = readable.read()
    except Exception as err:  # any I/O failure becomes a reject row
        yield beam.pvalue.TaggedOutput(REJECTS, reject_row(
            collection=collection, source=path, position=0, stage="read", reason="unreadable",
            detail=f"cannot read {path}: {err}"))
        return
    Metrics.counter("ingest", "files_read").inc()
    for record in records_of_file(path, collection, data, parse):
        yield record if isinstance(record, RawTune) else beam.pvalue.TaggedOutput(REJECTS, record)


class _ReadFiles(beam.PTransform):
    """File metadata or paths -> RawTune records (+ ``rejects``), read with ``fileio.ReadMatches``."""

    def __init__(self, collection_for: Callable[[str], str], parse: Parse):
        super().__init__()
        self.collection_for, self.parse = collection_for, parse

    def expand(self, matches):
        read = (
            matches
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadMatches" >> fileio.ReadMatches()
            | "Parse" >> beam.FlatMap(read_file, self.collection_for, self.parse).with_outputs(
                REJECTS, main="tunes")
        )
        return {"tunes": read.tunes, REJECTS: read[REJECTS]}


class ReadAbcFiles(beam.PTransform):
    """ABC files, folders and globs -> RawTune records (+ ``rejects``, + ``repeated``).

    Each file is split into tunes at ``X:`` (and at blank-line separated tunes without one),
    each tune inheriting the file header's fields; a file laid out as folk-rnn text is read as
    such. A file matched more than once is read once (``repeated`` says which). Works on every
    Beam filesystem.
    """

    def __init__(self, patterns: Iterable[str], collection: str | None = None):
        super().__init__()
        self.patterns = list(patterns)
        self.collection = collection

    def expand(self, pbegin):
        matched = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "MatchPatterns" >> beam.FlatMap(match_pattern).with_outputs(REJECTS, main="files")
        )
        counted = (
            matched.files
            | "PathAndSize" >> beam.Map(lambda m: (m.path, m.size_in_bytes))
            | "CountEachFile" >> beam.combiners.Count.PerElement()
        )
        repeated = counted | "RepeatedFiles" >> beam.FlatMap(lambda item: [item[0][0]] * (item[1] - 1))
        collection = self.collection
        read = (
            counted
            | "EachFileOnce" >> beam.Map(lambda item: FileMetadata(*item[0]))
            | "Read" >> _ReadFiles(lambda path: collection or collection_of(path), tunes_of_document)
        )
        rejects = (matched[REJECTS], read[REJECTS]) | "MergeRejects" >> beam.Flatten()
        return {"tunes": read["tunes"], REJECTS: rejects, REPEATED: repeated}


class ReadMusic21Corpus(beam.PTransform):
    """No input -> RawTune records of every ABC collection in music21's corpus (+ ``rejects``).

    The embedded default source: it needs no network, and each collection keeps its folder's name.
    """

    def expand(self, pbegin):
        return pbegin | "Music21Files" >> ReadAbcFiles(music21_abc_paths())


class _ReadFilesAsCollections(beam.PTransform):
    """Files -> RawTune records (+ ``rejects``), each file one collection named after it."""

    parse: Parse

    def __init__(self, paths: Iterable[str]):
        super().__init__()
        self.paths = list(paths)

    def expand(self, pbegin):
        return (
            pbegin
            | "Paths" >> beam.Create(self.paths)
            | "Read" >> _ReadFiles(file_stem, type(self).parse)
        )


class ReadTabularDump(_ReadFilesAsCollections):
    """CSV/JSON dumps (``tune_id, setting_id, name, type, meter, mode, abc``) -> RawTune (+ ``rejects``)."""

    parse = staticmethod(rows_of_dump)


class ReadFolkRnnText(_ReadFilesAsCollections):
    """folk-rnn text files (an M: line, a K: line, a line of tokens per tune) -> RawTune (+ ``rejects``)."""

    parse = staticmethod(records_of_folkrnn_text)


def _split_document(doc: dict) -> Iterator:
    """A scraped document -> its RawTune records (+ reject rows on ``rejects``)."""
    data = doc["text"].encode("utf-8")
    for record in tunes_of_document(doc["source"], doc["collection"], data, doc["encoding"]):
        yield record if isinstance(record, RawTune) else beam.pvalue.TaggedOutput(REJECTS, record)


class ReadSources(beam.PTransform):
    """PBegin -> {"tunes": RawTune records, "rejects": reject rows, "repeated": paths named again}.

    Every source of an ``IngestPlan``: ABC files, dumps, folk-rnn text, scraped URLs (with the
    scraper's politeness, cache and deadline settings), and music21's corpus when the plan is empty.
    """

    def __init__(self, plan: IngestPlan, *, cache_dir: str, delay: float = 1.0, per_host: int = 1,
                 timeout: float = 30.0, follow_offsite: bool = False):
        super().__init__()
        self.plan = plan
        self.scraping = {"cache_dir": cache_dir, "delay": delay, "per_host_concurrency": per_host,
                         "timeout": timeout, "follow_offsite": follow_offsite}

    def expand(self, pbegin):
        plan = self.plan
        outputs = []
        if plan.empty:
            outputs.append(pbegin | "Music21" >> ReadMusic21Corpus())
        if plan.abc:
            outputs.append(pbegin | "AbcFiles" >> ReadAbcFiles(plan.abc))
        if plan.dumps:
            outputs.append(pbegin | "TabularDumps" >> ReadTabularDump(plan.dumps))
        if plan.folkrnn_text:
            outputs.append(pbegin | "FolkRnnText" >> ReadFolkRnnText(plan.folkrnn_text))
        if plan.urls:
            from folkrnn.pipeline.beam.scrape import ScrapeAbc

            scraped = pbegin | "Urls" >> beam.Create(sorted(set(plan.urls))) | "Scrape" >> ScrapeAbc(**self.scraping)
            split = scraped.documents | "SplitScraped" >> beam.FlatMap(_split_document).with_outputs(
                REJECTS, main="tunes")
            outputs.append({"tunes": split.tunes, REJECTS: (scraped.rejects, split[REJECTS])
                            | "ScrapeRejects" >> beam.Flatten()})
        repeated = [pbegin | "RepeatedSources" >> beam.Create(plan.repeated)]
        repeated += [o[REPEATED] for o in outputs if REPEATED in o]
        return {
            "tunes": [o["tunes"] for o in outputs] | "AllTunes" >> beam.Flatten(),
            REJECTS: [o[REJECTS] for o in outputs] | "AllRejects" >> beam.Flatten(),
            REPEATED: repeated | "AllRepeated" >> beam.Flatten(),
        }
