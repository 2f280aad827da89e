"""Large source files read in byte ranges, so that several workers read one file and none holds it all.

A file larger than the split size is first surveyed (``survey``): read once from start to end, a
piece at a time, to find where its ranges start and end, how many records come before each range,
and what every range must know about the whole file (its encoding, the ABC file header, whether
it is laid out as folk-rnn text, a CSV file's column names). Each range (``ByteRange``) is then
read on its own (``records_of_range``) and yields exactly the records, positions and ids that
reading the whole file at once (``folkrnn.transforms.sources``) yields, in the same order.

Ranges and pieces start and end only where a record may start, found from the bytes alone:

* ABC: at an ``X:`` line, or after a blank line that follows a line ending in visible ASCII.
  ABC 2.1 splits tunes exactly there (a tune starts at ``X:`` and ends at a blank line), and the
  splitter's blank-line search is in step at such a line, so the tunes of the pieces are those of
  the whole file. The file header (the first block, when it is no tune) is read from the file's
  first piece and handed to every range.
* folk-rnn text, and ABC files that might be folk-rnn text (their first line is an ``M:`` line):
  after such a blank line only, so blocks stay whole.
* JSON lines: after any line break. CSV: after a record, which only the survey can see (a quoted
  field may hold line breaks), so CSV ranges start where the survey found a record start.

A JSON array cannot be split (one value: its elements can only be found by reading it from the
start), nor can a compressed file; both are read whole, as are files below the split size.
Memory: a range is decoded a piece (``PIECE_SIZE``) at a time, a CSV or JSON-lines range a line at
a time; the survey holds one piece. A piece ends at the first record start after ``PIECE_SIZE``
bytes, so a single record larger than that (or a file without a place to cut) is held whole.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from folkrnn.transforms.abc.split import (
    LayoutTally,
    count_tunes,
    file_header,
    iter_folkrnn_text,
    normalize_newlines,
    tunes_of_piece,
)
from folkrnn.transforms.records import RawTune, looks_binary, reject_row
from folkrnn.transforms.sources import (
    CSV_FIELD_LIMIT,
    ParsedRow,
    csv_reader_rows,
    folkrnn_records,
    no_tunes_reject,
    parse_json_row,
    records_of_rows,
)

SPLIT_SIZE = 8 * 2**20  # bytes a range covers (at least; it ends at the next record start)
PIECE_SIZE = 2**20  # bytes decoded and split at a time
HEAD_SIZE = 64 * 2**10  # bytes read to decide what kind of file it is

ReadAt = Callable[[int, int], bytes]  # (offset, length) -> the bytes there (fewer at the end)

# A blank line after a line with visible ASCII (its last such character at most 200 spaces before
# the line break). The splitters search blank lines left to right with ``\n[ \t]*\n``; at a line
# that is not blank that search is in step wherever it started, so a cut after such a blank line
# splits the text into pieces whose blocks are the blocks of the whole.
_BLANK = rb"[\x21-\x7e][ \t]{0,200}\r?\n[ \t]{0,200}\r?\n"
_LOOKBACK = 512  # longer than any match of _BLANK: a search that starts this far back finds every cut
CUTS = {
    "abc": re.compile(_BLANK + rb"|(?<=[\r\n])(?=X:)"),  # ... or at an X: line
    "blank": re.compile(_BLANK),
    "lines": re.compile(rb"\n"),
}


@dataclass(frozen=True)
class ByteRange:
    """One range of a file to read: bytes ``[start, end)``, whose first record is at ``position``."""

    path: str
    collection: str
    kind: str  # "abc", "folkrnn" (folk-rnn text, named or recognised), "jsonl" or "csv"
    start: int
    end: int
    position: int
    encoding: str  # "utf-8" or "latin-1": the whole file's
    records: int  # how many records the survey counted in the range
    total: int  # records in the whole file
    header: tuple[str, ...] = ()  # ABC: the file header's fields; CSV: the column names
    detected: bool = False  # folk-rnn text recognised by its layout in an ABC file
    cuts: str = "abc"  # where pieces may be cut: a key of CUTS
    line: int = 0  # CSV: lines before the range (error messages count lines from the file's start)


@dataclass
class Survey:
    """What the survey of one file found: its ranges, or the reject row that stands for the file."""

    ranges: list[ByteRange] = field(default_factory=list)
    reject: dict | None = None
    splittable: bool = True  # False: read the file whole (a JSON array)


# -- reading a file in pieces ------------------------------------------------------------------

def decode(data: bytes, encoding: str, at_start: bool) -> str:
    """Bytes of a file (a piece at ``at_start`` = offset 0 or later) as ``decode_text`` decodes the whole."""
    if encoding == "utf-8":
        return data.decode("utf-8-sig" if at_start else "utf-8")
    return data.decode("latin-1")


def iter_pieces(read_at: ReadAt, start: int, end: int, cuts: re.Pattern, piece_size: int = PIECE_SIZE,
                ) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` pieces that cover ``[start, end)`` (which start and end at cuts), each
    ending at the first cut at least ``piece_size`` bytes after its start, or at ``end``."""
    pos, buf = start, b""
    while pos < end:
        scanned = max(0, piece_size - _LOOKBACK)
        while True:
            complete = pos + len(buf) >= end
            cut = _first_cut(buf, cuts, scanned, piece_size, complete, end - pos)
            if cut is not None:
                yield pos, buf[:cut]
                pos, buf = pos + cut, buf[cut:]
                break
            if complete:
                yield pos, buf
                return
            scanned = max(scanned, len(buf) - _LOOKBACK)
            more = read_at(pos + len(buf), min(max(piece_size, len(buf)), end - pos - len(buf)))
            if not more:
                raise OSError(f"the file ended at byte {pos + len(buf)}, before byte {end}: did it change?")
            buf += more


def _first_cut(buf: bytes, cuts: re.Pattern, scanned: int, piece_size: int, complete: bool,
               limit: int) -> int | None:
    for match in cuts.finditer(buf, scanned):
        cut = match.end()
        if cut >= limit or (not complete and cut + 2 > len(buf)):  # X: may be just past the bytes read
            return None
        if cut >= piece_size:
            return cut
    return None


def iter_lines(read_at: ReadAt, start: int, end: int, chunk: int = PIECE_SIZE) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of every line in ``[start, end)``, each with its ``\\n``."""
    base, buf, at = start, b"", 0  # buf holds bytes from base on; lines before ``at`` are handed out
    while base + at < end:
        newline = buf.find(b"\n", at)
        if newline >= 0:
            yield base + at, buf[at:newline + 1]
            at = newline + 1
            continue
        if base + len(buf) >= end:
            yield base + at, buf[at:]
            return
        more = read_at(base + len(buf), min(chunk, end - base - len(buf)))
        if not more:
            raise OSError(f"the file ended at byte {base + len(buf)}, before byte {end}: did it change?")
        base, buf, at = base + at, buf[at:] + more, 0


def file_reader(handle) -> ReadAt:
    """A ``ReadAt`` over a seekable binary file handle."""
    def read_at(offset: int, length: int) -> bytes:
        handle.seek(offset)
        return handle.read(length)
    return read_at


# -- the survey --------------------------------------------------------------------------------

def survey(path: str, collection: str, kind: str, size: int, read_at: ReadAt, split_size: int = SPLIT_SIZE,
           ) -> Survey:
    """The ranges of a file of ``kind`` "abc", "folkrnn" (named folk-rnn text) or "dump"; the
    file is read as UTF-8 and, when it is not valid UTF-8, once more as latin-1 (as a whole file is)."""
    if kind == "abc" and looks_binary(read_at(0, 4096)):
        return Survey(reject=reject_row(collection=collection, source=path, position=0, stage="read",
                                        reason="binary", detail=f"{path} is binary data, not ABC text", raw=""))
    for encoding in ("utf-8", "latin-1"):
        try:
            return _survey(path, collection, kind, size, read_at, split_size, encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")


def _survey(path: str, collection: str, kind: str, size: int, read_at: ReadAt, split_size: int,
            encoding: str) -> Survey:
    base = ByteRange(path=path, collection=collection, kind=kind, start=0, end=0, position=0,
                     encoding=encoding, records=0, total=0)
    if kind == "dump":
        first = head_decoder(encoding)(read_at(0, HEAD_SIZE)).lstrip()[:1]
        if first in ("", "["):  # a JSON array (or nothing to see): one value, read whole
            return Survey(splittable=False)
        if path.endswith((".json", ".jsonl")) or first == "{":
            return _survey_json_lines(base, size, read_at, split_size)
        return _survey_csv(base, size, read_at, split_size)
    return _survey_blocks(base, size, read_at, split_size)


def might_be_folkrnn_text(head: bytes) -> bool:
    """False when the file's first line with text cannot be folk-rnn's ``M:`` line, so the file is
    ABC and may be cut at ``X:`` lines too. Judged on bytes, alike in UTF-8 and latin-1."""
    for line in head.splitlines():
        visible = line.strip()
        if visible:
            return not (0x21 <= visible[0] <= 0x7E) or visible.startswith(b"M:")
    return True


def _survey_blocks(base: ByteRange, size: int, read_at: ReadAt, split_size: int) -> Survey:
    """ABC and folk-rnn text: tunes counted per piece, by the same functions that read them."""
    kind = base.kind
    maybe_folkrnn = kind == "folkrnn" or might_be_folkrnn_text(read_at(0, HEAD_SIZE))
    cuts = "blank" if maybe_folkrnn else "abc"
    tally = LayoutTally()
    header: list[str] = []
    head_text = ""
    bounds: list[tuple[int, int, int, int]] = []  # start, end, ABC tunes, folk-rnn tunes
    start = abc_count = folkrnn_count = 0
    for offset, piece in iter_pieces(read_at, 0, size, CUTS[cuts], min(PIECE_SIZE, split_size)):
        text = decode(piece, base.encoding, offset == 0)
        if len(head_text) < 2000:
            head_text = (head_text + text)[:2000]
        if kind == "abc":
            normalized = normalize_newlines(text)
            if offset == 0:
                header = file_header(normalized)
            abc_count += count_tunes(normalized)
            if maybe_folkrnn:
                tally.add(text)
        if maybe_folkrnn and (kind == "folkrnn" or tally.laid_out):
            folkrnn_count += sum(1 for _ in iter_folkrnn_text(text))
        end = offset + len(piece)
        if end - start >= split_size or end >= size:
            bounds.append((start, end, abc_count, folkrnn_count))
            start, abc_count, folkrnn_count = end, 0, 0
    detected = kind == "abc" and maybe_folkrnn and tally.looks_like_folkrnn_text
    as_folkrnn = kind == "folkrnn" or detected
    counts = [(s, e, f if as_folkrnn else a) for s, e, a, f in bounds]
    total = sum(c for _, _, c in counts)
    if kind == "abc" and total == 0:
        return Survey(reject=no_tunes_reject(base.path, base.collection, head_text))
    common = replace(base, kind="folkrnn" if as_folkrnn else "abc", total=total, header=tuple(header),
                     detected=detected, cuts=cuts)
    return Survey(ranges=_ranges(common, counts))


def _ranges(common: ByteRange, counts: list[tuple[int, int, int]], extra: list[dict] | None = None,
            ) -> list[ByteRange]:
    """A ByteRange for every (start, end, records) holding records, numbered from 0 in file order."""
    ranges, position = [], 0
    for i, (start, end, records) in enumerate(counts):
        if records:
            ranges.append(replace(common, start=start, end=end, position=position, records=records,
                                  **(extra[i] if extra else {})))
        position += records
    return ranges


def _survey_json_lines(base: ByteRange, size: int, read_at: ReadAt, split_size: int) -> Survey:
    counts: list[tuple[int, int, int]] = []
    start = records = 0
    for offset, line in iter_lines(read_at, 0, size):
        text = decode(line, base.encoding, offset == 0)
        records += sum(1 for sub in text.splitlines() if sub.strip())
        end = offset + len(line)
        if end - start >= split_size or end >= size:
            counts.append((start, end, records))
            start, records = end, 0
    total = sum(c for _, _, c in counts)
    return Survey(ranges=_ranges(replace(base, kind="jsonl", total=total), counts))


def _survey_csv(base: ByteRange, size: int, read_at: ReadAt, split_size: int) -> Survey:
    """CSV: read with the csv module from start to end; a range ends after a record read whole."""
    lines = _LineFeed(read_at, size, base.encoding)
    reader = csv.DictReader(lines)
    counts: list[tuple[int, int, int]] = []
    extra: list[dict] = []
    start = records = start_line = 0
    header: tuple[str, ...] = ()
    for ok in _csv_outcomes(reader):
        records += 1
        end = lines.consumed
        if ok and not header:
            header = tuple(reader.fieldnames or ())
        if ok and end - start >= split_size and end < size:
            counts.append((start, end, records))
            extra.append({"line": start_line})
            start, records, start_line = end, 0, reader.line_num
    counts.append((start, size, records))
    extra.append({"line": start_line})
    total = sum(c for _, _, c in counts)
    return Survey(ranges=_ranges(replace(base, kind="csv", total=total, header=header), counts, extra))


def _csv_outcomes(reader: csv.DictReader) -> Iterator[bool]:
    """True for each record read, False for each the csv module refused (as ``_csv_rows`` counts)."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    while True:
        try:
            next(reader)
        except StopIteration:
            return
        except csv.Error:
            yield False
        else:
            yield True


class _LineFeed:
    """Decoded lines of a byte range for the csv module, counting the bytes it has taken."""

    def __init__(self, read_at: ReadAt, end: int, encoding: str, start: int = 0):
        self.lines = iter_lines(read_at, start, end)
        self.encoding = encoding
        self.consumed = start

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        offset, line = next(self.lines)
        self.consumed = offset + len(line)
        return decode(line, self.encoding, offset == 0)


# -- reading one range -------------------------------------------------------------------------

def records_of_range(task: ByteRange, read_at: ReadAt) -> Iterator[RawTune | dict]:
    """The records of one range, exactly as reading the whole file yields them there; a failure
    nobody foresaw ends the range with one ``internal_error`` reject row, never the run."""
    emitted = 0
    try:
        for record in _records(task, read_at):
            emitted += 1
            yield record
    except Exception as err:  # noqa: BLE001 - an input no parser foresaw must not end the run
        yield reject_row(
            collection=task.collection, source=task.path, position=task.position + emitted, stage="read",
            reason="internal_error",
            detail=(f"{task.path} bytes {task.start}-{task.end}: reading stopped after {emitted} records: "
                    f"{type(err).__name__}: {err}")[:2000])


def _records(task: ByteRange, read_at: ReadAt) -> Iterator[RawTune | dict]:
    if task.kind == "csv":
        yield from _csv_records(task, read_at)
    elif task.kind == "jsonl":
        yield from records_of_rows(task.path, task.collection, _json_lines(task, read_at), task.encoding)
    else:
        yield from _block_records(task, read_at)


def _block_records(task: ByteRange, read_at: ReadAt) -> Iterator[RawTune]:
    position = task.position
    header = list(task.header)
    for offset, piece in iter_pieces(read_at, task.start, task.end, CUTS[task.cuts]):
        text = decode(piece, task.encoding, offset == 0)
        if task.kind == "folkrnn":
            for record in folkrnn_records(task.path, task.collection, text, task.encoding, task.detected):
                yield replace(record, position=position)
                position += 1
            continue
        for tune in tunes_of_piece(normalize_newlines(text), header):
            yield RawTune(source=task.path, collection=task.collection, position=position, text=tune,
                          encoding=task.encoding)
            position += 1


def _json_lines(task: ByteRange, read_at: ReadAt) -> Iterator[ParsedRow]:
    """The parsed lines of a JSON-lines range; the file's first and last lines lose their outer
    whitespace, as when the whole text is stripped first."""
    position = task.position
    for offset, line in iter_lines(read_at, task.start, task.end):
        for sub in decode(line, task.encoding, offset == 0).splitlines():
            if not sub.strip():
                continue
            if position == 0:
                sub = sub.lstrip()
            if position == task.total - 1:
                sub = sub.rstrip()
            yield parse_json_row(position, sub)
            position += 1


def _csv_records(task: ByteRange, read_at: ReadAt) -> Iterator[RawTune | dict]:
    lines = _LineFeed(read_at, task.end, task.encoding, task.start)
    reader = csv.DictReader(lines, fieldnames=list(task.header) if task.start else None)
    rows: Iterator[ParsedRow] = csv_reader_rows(reader, task.position, task.line)
    yield from records_of_rows(task.path, task.collection, rows, task.encoding)


def head_decoder(encoding: str) -> Callable[[bytes], str]:
    """Decode the beginning of a file, a character cut at the end left out."""
    if encoding == "utf-8":
        return lambda data: codecs.getincrementaldecoder("utf-8-sig")().decode(data, final=False)
    return lambda data: data.decode("latin-1")
