"""Sources of the ingest: each a Beam transform that yields raw tune records.

Every source emits ``RawTune`` records on its main output and reject rows (schemas.tables.REJECTS)
on the tagged output ``rejects``, so a file that cannot be read is counted, never lost.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.abc.split import read_folkrnn_text, split_abc
from transforms.records import RawTune, decode_text, looks_binary, reject_row

REJECTS = "rejects"
TABULAR_COLUMNS = ("tune_id", "setting_id", "name", "type", "meter", "mode", "abc")


def collection_of(path: str) -> str:
    """A collection name for a file: its folder's name (music21 keeps one collection a folder)."""
    parent = os.path.basename(os.path.dirname(path.rstrip("/")))
    return parent or os.path.splitext(os.path.basename(path))[0] or "abc"


def tunes_of_document(source: str, collection: str, data: bytes,
                      encoding: str | None = None) -> Iterator[RawTune | dict]:
    """The tunes of one ABC document (file or fetched page), or a reject row for the document.

    ``encoding`` is given when the text was already decoded (a scraped page), to keep its record.
    """
    if looks_binary(data):
        yield reject_row(collection=collection, source=source, position=0, stage="read", reason="binary",
                         detail=f"{source} is binary data, not ABC text", raw="")
        return
    text, detected = decode_text(data)
    encoding = encoding or detected
    tunes = split_abc(text)
    if not tunes:
        yield reject_row(collection=collection, source=source, position=0, stage="read", reason="no_tunes",
                         detail=f"{source} holds no tune (no block with a K: field)", raw=text[:2000])
        return
    for position, tune in enumerate(tunes):
        yield RawTune(source=source, collection=collection, position=position, text=tune, encoding=encoding)


def read_records(path: str, collection: str | None, parse) -> Iterator:
    """Read one file and parse it into RawTune records; an unreadable file, or what ``parse`` says
    cannot be a tune, is a reject row on the ``rejects`` output.

    ``parse(path, collection, data)`` yields RawTune records or reject rows.
    """
    name = collection or collection_of(path)
    try:
        with FileSystems.open(path) as handle:
            data = handle.read()
    except Exception as err:  # any I/O failure becomes a reject row, the run goes on
        yield beam.pvalue.TaggedOutput(REJECTS, reject_row(
            collection=name, source=path, position=0, stage="read", reason="unreadable",
            detail=f"cannot read {path}: {err}"))
        return
    Metrics.counter("ingest", "files_read").inc()
    for record in parse(path, name, data):
        yield record if isinstance(record, RawTune) else beam.pvalue.TaggedOutput(REJECTS, record)


def _expand_pattern(pattern: str) -> Iterator:
    """Files matching a path, folder or glob (any Beam filesystem: local, gs:// ...)."""
    is_glob = any(ch in pattern for ch in "*?[")
    if not is_glob and (pattern.endswith("/") or os.path.isdir(pattern)):
        pattern = FileSystems.join(pattern.rstrip("/"), "**")
    try:
        matches, error = FileSystems.match([pattern])[0].metadata_list, ""
    except Exception as err:  # a bad pattern is a reject, not a crash
        matches, error = [], f": {err}"
    paths = sorted(m.path for m in matches if not m.path.endswith("/") and not os.path.isdir(m.path))
    if not paths:
        yield beam.pvalue.TaggedOutput(REJECTS, reject_row(
            collection="input", source=pattern, position=0, stage="read", reason="no_match",
            detail=f"nothing matches {pattern}{error}"))
    yield from paths


class ReadAbcFiles(beam.PTransform):
    """ABC files, folders and globs -> RawTune records (+ ``rejects``).

    Each file is split into tunes at ``X:`` (and at blank-line separated tunes without one),
    each tune inheriting the file header's fields. Works on every Beam filesystem.
    """

    def __init__(self, patterns: Iterable[str], collection: str | None = None):
        super().__init__()
        self.patterns = list(patterns)
        self.collection = collection

    def expand(self, pbegin):
        files = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "ExpandPatterns" >> beam.FlatMap(_expand_pattern).with_outputs(REJECTS, main="paths")
        )
        read = (
            files.paths
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadAndSplit" >> beam.FlatMap(read_records, self.collection, tunes_of_document).with_outputs(
                REJECTS, main="tunes")
        )
        rejects = (files[REJECTS], read[REJECTS]) | "MergeRejects" >> beam.Flatten()
        return {"tunes": read.tunes, REJECTS: rejects}


def music21_abc_paths() -> list[str]:
    """The ABC files shipped in music21's corpus (O'Neill's, Ryan's, Aird's, Essen ...)."""
    from music21 import corpus

    return sorted(str(p) for p in corpus.getCorePaths(fileExtensions=["abc"]))


class ReadMusic21Corpus(beam.PTransform):
    """No input -> RawTune records of every ABC collection in music21's corpus (+ ``rejects``).

    The embedded default source: it needs no network, and each collection keeps its folder's name.
    """

    def expand(self, pbegin):
        return pbegin | "Music21Files" >> ReadAbcFiles(music21_abc_paths())


def _key_field(mode: str) -> str:
    """The dump's mode column ("Gmajor", "Edorian") as a K: value."""
    return mode.strip()


def file_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def rows_of_dump(path: str, collection: str, data: bytes) -> Iterator[RawTune | dict]:
    """Tunes of a tabular dump (CSV or JSON), one ABC body per row; the header is rebuilt from columns."""
    text, encoding = decode_text(data)
    try:
        if path.endswith((".json", ".jsonl")) or text.lstrip().startswith(("[", "{")):
            stripped = text.strip()
            rows = json.loads(stripped) if stripped.startswith("[") else [
                json.loads(line) for line in stripped.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
    except (ValueError, csv.Error) as err:
        yield reject_row(collection=collection, source=path, position=0, stage="read", reason="unparseable",
                         detail=f"{path} is not valid CSV or JSON: {err}", raw=text[:2000])
        return
    for position, row in enumerate(rows):
        if not isinstance(row, dict) or not row.get("abc"):
            yield reject_row(collection=collection, source=path, position=position, stage="read",
                             reason="missing_column", detail=f"row {position} has no 'abc' body (columns: "
                             f"{', '.join(TABULAR_COLUMNS)})", raw=json.dumps(row, default=str)[:2000])
            continue
        number = row.get("setting_id") or row.get("tune_id") or position + 1
        header = [f"X:{number}", f"T:{row.get('name') or ''}"]
        if row.get("type"):
            header.append(f"R:{row['type']}")
        if row.get("meter"):
            header.append(f"M:{row['meter']}")
        header.append("L:1/8")  # the community dumps write bodies in eighths
        header.append(f"K:{_key_field(str(row.get('mode') or ''))}")
        body = str(row["abc"]).replace("\r\n", "\n").replace("\\n", "\n")
        meta = {k: str(row[k]) for k in ("tune_id", "setting_id", "type") if row.get(k) is not None}
        yield RawTune(source=path, collection=collection, position=position, text="\n".join(header) + "\n" + body,
                      encoding=encoding, title=row.get("name") or None, meta=meta)


class _ReadFilesAsCollections(beam.PTransform):
    """Files -> RawTune records (+ ``rejects``), each file one collection named after it."""

    parse = None  # (path, collection, data) -> RawTune records or reject rows

    def __init__(self, paths: Iterable[str]):
        super().__init__()
        self.paths = list(paths)

    def expand(self, pbegin):
        parse = type(self).parse
        out = (
            pbegin
            | "Paths" >> beam.Create([(p, file_stem(p)) for p in self.paths])
            | "ReadAndParse" >> beam.FlatMap(lambda item: read_records(*item, parse)).with_outputs(
                REJECTS, main="tunes")
        )
        return {"tunes": out.tunes, REJECTS: out[REJECTS]}


class ReadTabularDump(_ReadFilesAsCollections):
    """CSV/JSON dumps (``tune_id, setting_id, name, type, meter, mode, abc``) -> RawTune (+ ``rejects``)."""

    parse = staticmethod(rows_of_dump)


def records_of_folkrnn_text(path: str, collection: str, data: bytes) -> Iterator[RawTune]:
    """Tunes of a folk-rnn data file; the record's text is the token block itself."""
    text, encoding = decode_text(data)
    for position, tokens in enumerate(read_folkrnn_text(text)):
        yield RawTune(source=path, collection=collection, position=position, text=" ".join(tokens),
                      encoding=encoding, meta={"format": "folkrnn-text"})


class ReadFolkRnnText(_ReadFilesAsCollections):
    """folk-rnn text files (an M: line, a K: line, a line of tokens per tune) -> RawTune (+ ``rejects``)."""

    parse = staticmethod(records_of_folkrnn_text)
