"""What the ingest's sources hold: the bytes of one file or page -> RawTune records and reject rows.

Pure parsers (no I/O, no Beam): ABC documents, CSV/JSON dumps and folk-rnn text. One bad record (a
row nested too deep, a CSV field too long) is a reject row (``folkrnn.schemas.tables.REJECTS``) and
the others go on. Local paths are canonical (``realpath``), so a file given twice or spelt two ways
is read once and keeps one id. ``folkrnn.pipeline.beam.sources`` reads the files on Beam.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator

from folkrnn.transforms.abc.split import iter_abc, iter_folkrnn_text, looks_like_folkrnn_text
from folkrnn.transforms.records import RawTune, decode_text, looks_binary, reject_row

TABULAR_COLUMNS = ("tune_id", "setting_id", "name", "type", "meter", "mode", "abc")


def is_local(path: str) -> bool:
    return "://" not in path


def canonical_source(source: str) -> str:
    """One spelling per local file (``a.abc``, ``./a.abc``, ``dir/../a.abc`` -> ``/abs/a.abc``); a
    glob is made absolute so that its matches are; URLs and other filesystems are left as given."""
    if not is_local(source):
        return source
    if any(ch in source for ch in "*?["):
        return os.path.abspath(source)
    return os.path.realpath(source)


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
    if looks_like_folkrnn_text(text):  # given without --format folkrnn-text: ABC parsing would reject it
        yield from folkrnn_records(source, collection, text, encoding, detected=True)
        return
    position = -1
    for position, tune in enumerate(iter_abc(text)):
        yield RawTune(source=source, collection=collection, position=position, text=tune, encoding=encoding)
    if position < 0:
        yield no_tunes_reject(source, collection, text)


def no_tunes_reject(source: str, collection: str, text: str) -> dict:
    """The reject row of an ABC document without a tune; ``text`` is its text, or its beginning."""
    return reject_row(collection=collection, source=source, position=0, stage="read", reason="no_tunes",
                      detail=f"{source} holds no tune (no block with a K: field)", raw=text[:2000])


def music21_abc_paths() -> list[str]:
    """The ABC files shipped in music21's corpus (O'Neill's, Ryan's, Aird's, Essen ...)."""
    from music21 import corpus

    return sorted(str(p) for p in corpus.getCorePaths(fileExtensions=["abc"]))


def _key_field(mode: str) -> str:
    """The dump's mode column ("Gmajor", "Edorian") as a K: value."""
    return mode.strip()


def file_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def rows_of_dump(path: str, collection: str, data: bytes) -> Iterator[RawTune | dict]:
    """Tunes of a tabular dump (CSV or JSON), one ABC body per row; the header is rebuilt from columns.

    A row that cannot be read (nested too deep, malformed, a non-text column) is one reject row;
    the other rows go on.
    """
    text, encoding = decode_text(data)
    if path.endswith((".json", ".jsonl")) or text.lstrip().startswith(("[", "{")):
        rows = _json_rows(text)
    else:
        rows = _csv_rows(text)
    if rows is None:
        yield reject_row(collection=collection, source=path, position=0, stage="read", reason="unparseable",
                         detail=f"{path} is not a JSON array: its brackets do not balance, or text follows it",
                         raw=text[:2000])
        return
    yield from records_of_rows(path, collection, rows, encoding)


def records_of_rows(path: str, collection: str, rows: Iterable[ParsedRow], encoding: str) -> Iterator[RawTune | dict]:
    """A RawTune for each row of a dump read, a reject row for each row that could not be."""
    for position, row, error, raw in rows:
        if error:
            yield reject_row(collection=collection, source=path, position=position, stage="read",
                             reason="unparseable", detail=f"{path} row {position}: {error}", raw=raw[:2000])
            continue
        yield _tune_of_row(path, collection, position, row, encoding, raw)


ParsedRow = tuple[int, object, str, str]  # position, row (if read), error (if not), raw text


def _json_error(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "nested deeper than the JSON reader allows"
    return f"not valid JSON: {err}"


def _json_rows(text: str) -> list[ParsedRow] | None:
    """Rows of a JSON array (or of JSON lines). The whole array is parsed at once when it can be;
    else element by element, so that one bad element is the only reject. None: not even the array's
    outline can be read."""
    stripped = text.strip()
    if not stripped.startswith("["):
        lines = [line for line in stripped.splitlines() if line.strip()]
        return [parse_json_row(position, line) for position, line in enumerate(lines)]
    try:
        rows = json.loads(stripped)
    except (ValueError, RecursionError):
        pieces = split_json_array(stripped)
        return None if pieces is None else [parse_json_row(position, piece) for position, piece in enumerate(pieces)]
    return [(position, row, "", "") for position, row in enumerate(rows)]


def parse_json_row(position: int, piece: str) -> ParsedRow:
    try:
        return position, json.loads(piece), "", piece
    except (ValueError, RecursionError) as err:
        return position, None, _json_error(err), piece


_JSON_OUTLINE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def split_json_array(text: str) -> list[str] | None:
    """The texts of a JSON array's elements, found from brackets, commas and strings alone (no
    recursion, however deep an element is). None when the text is not one array whose brackets
    balance."""
    depth, start, pieces = 0, 0, []
    for match in _JSON_OUTLINE.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth == 1:
                if token != "[" or match.start() != 0:
                    return None
                start = match.end()
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                pieces.append(text[start:match.start()])
                if text[match.end():].strip():
                    return None
                return [] if len(pieces) == 1 and not pieces[0].strip() else pieces  # "[]": no rows
            if depth < 0:
                return None
        elif token == "," and depth == 1:
            pieces.append(text[start:match.start()])
            start = match.end()
    return None


def _csv_rows(text: str) -> Iterator[ParsedRow]:
    """Rows of a CSV file; a row the reader cannot take is an error at its position, the next go on."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    return csv_reader_rows(csv.DictReader(io.StringIO(text)))


def csv_reader_rows(reader: csv.DictReader, position: int = 0, line: int = 0) -> Iterator[ParsedRow]:
    """The rows of ``reader`` numbered from ``position``, its line numbers counted after ``line``
    (a byte range of a file starts part-way)."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield position, None, f"not valid CSV (line {line + reader.line_num}): {err}", ""
        else:
            yield position, row, "", ""
        position += 1


# A field can be as long as the file: the csv module's default (128 KB) made a long tune
# reject the whole file. Process-wide, but only ever raised.
CSV_FIELD_LIMIT = 2**31 - 1

SCALAR = (str, int, float, bool)


def _raw_of(row: object) -> str:
    try:
        return json.dumps(row, default=str)[:2000]
    except (ValueError, RecursionError):
        return ""


def _tune_of_row(path: str, collection: str, position: int, row: object, encoding: str,
                 raw: str) -> RawTune | dict:
    def reject(reason: str, detail: str) -> dict:
        return reject_row(collection=collection, source=path, position=position, stage="read", reason=reason,
                          detail=detail, raw=(raw or _raw_of(row))[:2000])

    if not isinstance(row, dict) or not row.get("abc"):
        return reject("missing_column", f"row {position} has no 'abc' body (columns: {', '.join(TABULAR_COLUMNS)})")
    not_text = [k for k in TABULAR_COLUMNS if row.get(k) is not None and not isinstance(row[k], SCALAR)]
    if not_text:
        return reject("bad_column", f"row {position}: column {not_text[0]!r} holds a "
                      f"{type(row[not_text[0]]).__name__}, not text or a number")
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
    title = str(row["name"]) if row.get("name") else None
    return RawTune(source=path, collection=collection, position=position, text="\n".join(header) + "\n" + body,
                   encoding=encoding, title=title, meta=meta)


def records_of_folkrnn_text(path: str, collection: str, data: bytes) -> Iterator[RawTune]:
    """Tunes of a folk-rnn data file; the record's text is the token block itself."""
    text, encoding = decode_text(data)
    yield from folkrnn_records(path, collection, text, encoding)


def folkrnn_records(source: str, collection: str, text: str, encoding: str,
                    detected: bool = False) -> Iterator[RawTune]:
    """RawTune records of folk-rnn text; ``detected``: recognised by its layout, not named by --format."""
    meta = {"format": "folkrnn-text", **({"detected": "layout"} if detected else {})}
    for position, tokens in enumerate(iter_folkrnn_text(text)):
        yield RawTune(source=source, collection=collection, position=position, text=" ".join(tokens),
                      encoding=encoding, meta=meta)


def records_of_file(path: str, collection: str, data: bytes, parse) -> Iterator[RawTune | dict]:
    """``parse(path, collection, data)``'s RawTune records and reject rows; a failure no parser
    foresaw ends this file with one ``internal_error`` reject row, never the run."""
    emitted = 0
    try:
        for record in parse(path, collection, data):
            emitted += 1
            yield record
    except Exception as err:  # noqa: BLE001 - an input no parser foresaw must not end the run
        yield reject_row(
            collection=collection, source=path, position=emitted, stage="read", reason="internal_error",
            detail=f"{path}: reading stopped after {emitted} records: {type(err).__name__}: {err}"[:2000])
