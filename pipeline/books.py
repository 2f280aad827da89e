"""Tune books: generated tunes as numbered volumes (ABC 2.1, a typeset PDF, MIDI) and a corpus.

A volume is a run of consecutive tunes, 3,000 by default, in tune-number order; tune numbers are
the generation numbers, so ``X:488`` is tune 488 in the ABC, the PDF, the MIDI file names and the
corpus. The ABC text is a pure function of the rows (no dates, no versions, no paths), so a
rebuild from the same inputs gives the same bytes.

The PDF: abcm2ps has no table of contents, so the volume is typeset twice. Pass 1 typesets the
title page, contents pages with placeholder page numbers and the tunes; the PostScript says on
which page each tune starts (abcm2ps writes a ``%%Page:`` comment per page and ``% --- xref N``
where tune N starts). Pass 2 typesets the same source with the real page numbers. The contents
have a fixed number of rows per page and an explicit page break after each contents page, so the
front matter has the same page count in both passes and the tunes land on the same pages; pass 2
is parsed again and must agree. Page numbers are physical PDF pages (the title page is page 1).
Ghostscript turns the PostScript into the PDF. abcm2ps runs in secure mode (``-S``): the input is
machine-made and must not include files or inject PostScript.
"""

from __future__ import annotations

import bisect
import ctypes
import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from folkrnn.schemas.files import atomic_write, temporary_name
from folkrnn.schemas.tables import CORPUS, FINDINGS_FIELDS, GENERATED, VALIDATED
from folkrnn.transforms.abc.tokenize import detokenize
from folkrnn.transforms.titles import title_for

PER_VOLUME = 3000
DEFAULT_BOOK_TITLE = "The folk-rnn Session Book"
# Part of every volume's input hash: bump it when the ABC, PDF or corpus layout changes, so
# existing volumes are rebuilt instead of being taken as up to date.
FORMAT_VERSION = "1"
CONTENTS_ROWS = 80  # rows per column of a contents page (two columns a page); fits A4 at scale 0.7
ABCM2PS_TIMEOUT = 300  # seconds; one pass over 3,000 tunes takes under one
GS_TIMEOUT = 900  # seconds; ghostscript takes some 6-10 s per 1,000 pages here
ABC2MIDI_TIMEOUT = 300
# Work folders, dot-prefixed beside the outputs (readers skip them; see remove_leftovers).
TYPESET_PREFIX = ".typeset-"
MIDI_PREFIX = ".midi-"

# Page and music layout for abcm2ps (format parameters, not PostScript: allowed in secure mode).
# Fonts used by the front matter must be declared before any output. ``linewarn 0`` silences
# "Line underfull" notices: they are about this layout (short tunes on wide staves), not about a
# tune, and would otherwise flag a third of all tunes; abcm2ps's warnings about tunes stay on.
LAYOUT = """\
%%pagewidth 21cm
%%pageheight 29.7cm
%%scale 0.7
%%topmargin 1.2cm
%%botmargin 1.2cm
%%leftmargin 1.4cm
%%rightmargin 1.4cm
%%topspace 0.2cm
%%titlespace 0.3cm
%%musicspace 0.3cm
%%titlefont Times-Bold 16
%%headerfont Times-Italic 12
%%writefields X 1
%%font Courier
%%font Times-Roman
%%font Times-Bold
%%font Times-Italic
%%linewarn 0"""


# --- Volumes and their ABC ----------------------------------------------------------------------
def volume_ranges(numbers: Iterable[int], per_volume: int = PER_VOLUME) -> list[tuple[int, int]]:
    """(first, last) tune number of each volume: sorted numbers cut into runs of ``per_volume``.

    ``volume_ranges(range(1, 30001))`` is ten volumes, (1, 3000), (3001, 6000) ... Raises
    ValueError on a repeated number: a tune number names one tune.
    """
    if per_volume < 1:
        raise ValueError(f"tunes per volume must be at least 1, got {per_volume}")
    ordered = sorted(int(n) for n in numbers)
    for a, b in zip(ordered, ordered[1:]):
        if a == b:
            raise ValueError(f"tune number {a} appears more than once")
    return [(ordered[i], ordered[min(i + per_volume, len(ordered)) - 1]) for i in range(0, len(ordered), per_volume)]


def volume_stem(volume: int, n_volumes: int) -> str:
    """File name stem of a volume, e.g. ``folkrnn-volume-03``."""
    return f"folkrnn-volume-{volume:0{max(2, len(str(n_volumes)))}d}"


def plain_text(text: str) -> str:
    """A user's text made safe for one line of ABC and of abcm2ps text: abcm2ps reads ``$`` as a
    font switch and ``\\`` as an escape, ``%`` starts an ABC comment, a newline ends a field."""
    text = "".join(" " if ch in "\r\n\t" or ord(ch) < 32 else ch for ch in text)
    text = text.replace("$", "").replace("%", "").replace("\\", "/").replace('"', "'")
    return " ".join(text.split())


def tune_abc(row: Mapping) -> str:
    """One tune block: ``X:`` number, ``T:`` title, then what ``detokenize`` writes."""
    return detokenize(list(row["tokens"] or []), number=int(row["number"]), title=plain_text(row["title"] or ""),
                      typeset=True)


def write_volume_abc(rows: Sequence[Mapping], volume: int, n_volumes: int, book_title: str,
                     blocks: Sequence[str] | None = None) -> str:
    """A volume as one ABC 2.1 file: a comment header, then one block per tune, blank-line separated.

    ``rows`` need number, title and tokens, in the order to print; ``blocks`` are the tunes' ABC
    when already made (``tune_abc`` of each row: detokenizing is most of the work). Identical
    input, identical text.
    """
    first, last = (int(rows[0]["number"]), int(rows[-1]["number"])) if rows else (0, 0)
    header = [
        "%abc-2.1",
        f"% {plain_text(book_title)}, Volume {volume} of {n_volumes}: tunes {first}-{last} ({len(rows)} tunes)",
        "% Tunes generated by folk-rnn v2 (folkrnn). X: is the generation number; titles are made up",
        "% from it (transforms/titles.py).",
    ]
    tunes = blocks if blocks is not None else [tune_abc(row) for row in rows]
    return "\n".join(header) + "\n\n" + "\n".join(tunes)


def tune_start_lines(abc_text: str) -> tuple[list[int], list[int]]:
    """1-based line of each ``X:`` field and its tune number, in file order (for message lookup)."""
    lines, numbers = [], []
    for i, line in enumerate(abc_text.split("\n"), start=1):
        if line.startswith("X:"):
            lines.append(i)
            numbers.append(int(line[2:].strip()))
    return lines, numbers


def tune_at_line(line: int, starts: tuple[list[int], list[int]]) -> int | None:
    """The tune whose block holds ``line``, None for the file header."""
    k = bisect.bisect_right(starts[0], line) - 1
    return starts[1][k] if k >= 0 else None


# --- Front matter and typesetting ---------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One contents line."""

    number: int
    title: str
    meter: str
    mode: str


def contents_pages(n_entries: int) -> int:
    return max(1, math.ceil(n_entries / (2 * CONTENTS_ROWS)))


def _entry_text(entry: Entry | None, page: int | None) -> str:
    if entry is None:
        return ""
    title = plain_text(entry.title)[:36]
    page_text = "?" if page is None else str(page)
    return f"{entry.number:>6} {title:.<37} {entry.meter or '-':<4} {entry.mode or '-':<3} {page_text:>4}"


def front_matter(book_title: str, volume: int, n_volumes: int, entries: Sequence[Entry],
                 pages: Mapping[int, int] | None) -> list[str]:
    """abcm2ps directives for the title page, the running header and the contents pages.

    ``pages`` None gives placeholder page numbers (pass 1). The contents take a fixed number of
    pages whatever the numbers say: an explicit page break ends each.
    """
    title = plain_text(book_title)
    first, last = (entries[0].number, entries[-1].number) if entries else (0, 0)
    lines = [
        "%%vskip 7cm",
        "%%textfont Times-Bold 30",
        f"%%center {title}",
        "%%vskip 1cm",
        "%%textfont Times-Roman 20",
        f"%%center Volume {volume} of {n_volumes}",
        "%%vskip 0.6cm",
        "%%textfont Times-Roman 14",
        f"%%center Tunes {first} to {last} ({len(entries)} tunes)",
        "%%vskip 1cm",
        "%%textfont Times-Italic 12",
        "%%center Generated by folk-rnn v2. Each title is made up from the tune number.",
        "%%newpage",
        # Set after the title page's break, so every later page has it and the title page not.
        f'%%header "{title} \u2014 Volume {volume} of {n_volumes}\t\t$P"',
    ]
    per_page = 2 * CONTENTS_ROWS
    for p in range(contents_pages(len(entries))):
        chunk = entries[p * per_page:(p + 1) * per_page]
        lines += ["%%textfont Times-Bold 16", "%%center Contents", "%%textfont Courier 10",
                  "%%begintext obeylines"]
        for r in range(CONTENTS_ROWS):
            left = chunk[r] if r < len(chunk) else None
            right = chunk[CONTENTS_ROWS + r] if CONTENTS_ROWS + r < len(chunk) else None
            if left is None:
                break
            cells = [_entry_text(e, None if pages is None or e is None else pages.get(e.number))
                     for e in (left, right)]
            lines.append(f"{cells[0]:<58}    {cells[1]}".rstrip())
        lines += ["%%endtext", "%%newpage"]
    return lines


_PAGE_OR_XREF = re.compile(r"^(?:%%Page: \S+ (\d+)|% --- xref (\d+))$", re.MULTILINE)
_ABCM2PS_MESSAGE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+): (?P<level>error|warning): (?P<text>.*)$")
_ABC2MIDI_MESSAGE = re.compile(r"^(?P<level>Error|Warning) in line-char (?P<line>\d+)-(?P<column>\d+) : (?P<text>.*)$")


def tune_pages(postscript: str) -> tuple[dict[int, int], int]:
    """Page on which each tune starts, from abcm2ps's PostScript, and the number of pages."""
    pages: dict[int, int] = {}
    page = 0
    for match in _PAGE_OR_XREF.finditer(postscript):
        if match.group(1):
            page = int(match.group(1))
        else:
            pages.setdefault(int(match.group(2)), page)
    return pages, page


def abcm2ps_messages(stderr: str, line_offset: int, starts: tuple[list[int], list[int]]) -> list[dict]:
    """abcm2ps diagnostics as records: level, tune number, line and column in the volume's ABC.

    abcm2ps prints ``file:line:col: error: text`` followed by the source line and a caret; the
    echo lines are dropped, any other line is kept as a message of no tune.
    """
    messages = []
    for raw in stderr.splitlines():
        match = _ABCM2PS_MESSAGE.match(raw)
        if match:
            line = int(match["line"]) - line_offset
            messages.append({"number": tune_at_line(line, starts) if line > 0 else None, "level": match["level"],
                             "line": line, "column": int(match["column"]), "message": match["text"]})
        elif raw.strip() and not re.match(r"^\s*(\d+ |\^)", raw):
            messages.append({"number": None, "level": "warning" if "warning" in raw.lower() else "error",
                             "line": None, "column": None, "message": raw.strip()})
    return messages


@dataclass
class Typeset:
    pages: dict[int, int]  # tune number -> PDF page where it starts
    page_count: int
    front_pages: int
    messages: list[dict]
    returncode: int
    seconds: dict[str, float] = field(default_factory=dict)


# --- Processes that die with their parent ------------------------------------------------------
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here, not in the forked child: a preexec function should do as little as it can.
_PRCTL = _load_prctl()


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` (the pid that started it) dies.

    A kill -9 of ``folkrnn compile`` runs no cleanup, so its pool workers, abcm2ps and
    ghostscript would run on under PID 1 and write into the output folder. Linux only (prctl
    PR_SET_PDEATHSIG); elsewhere a no-op. If the parent is already gone (it died between the
    fork and this call, so the signal will never come), the process ends itself at once.
    """
    if _PRCTL is None:
        return
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _run(command: list[str], timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess:
    parent = os.getpid()
    try:
        # The tool dies with this process: see die_with_parent. (The signal is sent when the
        # thread that started the tool ends; _run waits for the tool, so that thread outlives it.)
        return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout, cwd=cwd,
                              preexec_fn=(lambda: die_with_parent(parent)) if _PRCTL is not None else None)
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} is not installed (apt-get install abcm2ps abcmidi ghostscript)") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{command[0]} took longer than {timeout:.0f} s and was stopped") from None


def _abcm2ps(source: str, workdir: str, name: str) -> tuple[str, subprocess.CompletedProcess]:
    src_path = os.path.join(workdir, f"{name}.abc")
    ps_path = os.path.join(workdir, f"{name}.ps")
    with open(src_path, "w", encoding="utf-8") as handle:
        handle.write(source)
    proc = _run(["abcm2ps", "-S", "-O", ps_path, src_path], ABCM2PS_TIMEOUT)
    # abcm2ps exits 1 when the input had errors; it still typesets what it could.
    if proc.returncode not in (0, 1) or not os.path.exists(ps_path):
        raise RuntimeError(f"abcm2ps failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    with open(ps_path, encoding="latin-1") as handle:
        return handle.read(), proc


def _docinfo(title: str) -> str:
    hex_title = ("\ufeff" + title).encode("utf-16-be").hex().upper()
    return f"[ /Title <{hex_title}> /Creator (folkrnn compile, abcm2ps, ghostscript) /DOCINFO pdfmark\n"


def typeset_volume(abc_text: str, pdf_path: str, *, volume: int, n_volumes: int, book_title: str,
                   entries: Sequence[Entry]) -> Typeset:
    """Typeset a volume's ABC as a PDF with a title page and contents; returns where each tune is.

    Two abcm2ps passes (see the module docstring), then ghostscript. The PDF is written to a
    unique temporary name beside it and renamed, so ``pdf_path`` is either the old file or the
    complete new one. The work folder sits beside it too (dot-prefixed): one a kill -9 leaves
    behind is removed by the next run (``remove_leftovers``), not left in /tmp.
    """
    seconds: dict[str, float] = {}
    starts = tune_start_lines(abc_text)
    folder = os.path.dirname(os.path.abspath(pdf_path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=TYPESET_PREFIX, dir=folder) as workdir:
        pages: dict[int, int] | None = None
        for attempt in ("pass1", "pass2"):
            preamble = ["%abc-2.1", LAYOUT, *front_matter(book_title, volume, n_volumes, entries, pages), ""]
            offset = len("\n".join(preamble).split("\n"))
            start = time.perf_counter()
            postscript, proc = _abcm2ps("\n".join(preamble) + "\n" + abc_text, workdir, attempt)
            seconds[f"abcm2ps_{attempt}"] = time.perf_counter() - start
            found, page_count = tune_pages(postscript)
            if pages is not None and found != pages:
                raise RuntimeError("the tunes moved between the two typesetting passes; the contents would be wrong")
            pages = found
        messages = abcm2ps_messages(proc.stderr, offset, starts)
        start = time.perf_counter()
        info_path = os.path.join(workdir, "docinfo.ps")
        with open(info_path, "w", encoding="ascii") as handle:
            handle.write(_docinfo(f"{plain_text(book_title)}, Volume {volume} of {n_volumes}"))
        # ghostscript writes the file itself, so it gets a unique temporary name (two runs, or a
        # run and the leftovers of a killed one, never share it) and the rename is ours.
        pdf_temporary = temporary_name(os.path.abspath(pdf_path))
        try:
            gs = _run(["gs", "-q", "-dBATCH", "-dNOPAUSE", "-dSAFER", "-sDEVICE=pdfwrite",
                       f"-sOutputFile={pdf_temporary}", os.path.join(workdir, "pass2.ps"), info_path], GS_TIMEOUT)
            if gs.returncode != 0:
                raise RuntimeError(f"ghostscript failed (exit {gs.returncode}): "
                                   f"{(gs.stderr or gs.stdout).strip()[-300:]}")
            os.replace(pdf_temporary, pdf_path)
        finally:
            if os.path.exists(pdf_temporary):
                os.remove(pdf_temporary)
        seconds["ghostscript"] = time.perf_counter() - start
    return Typeset(pages=pages or {}, page_count=page_count, front_pages=1 + contents_pages(len(entries)),
                   messages=messages, returncode=proc.returncode, seconds=seconds)


def make_midi(abc_text: str, midi_dir: str) -> tuple[int, list[dict]]:
    """One MIDI file per tune with abc2midi: ``midi_dir/tune-<number>.mid``; returns (files, messages).

    abc2midi names each output after its input file and the X: number, so it reads a copy called
    ``tune-.abc``. The folder is replaced as a whole, never left half-written.
    """
    parent = os.path.dirname(os.path.abspath(midi_dir))
    os.makedirs(parent, exist_ok=True)
    starts = tune_start_lines(abc_text)
    work = tempfile.mkdtemp(prefix=MIDI_PREFIX, dir=parent)
    try:
        with open(os.path.join(work, "tune-.abc"), "w", encoding="utf-8") as handle:
            handle.write(abc_text)
        proc = _run(["abc2midi", "tune-.abc"], ABC2MIDI_TIMEOUT, cwd=work)
        os.remove(os.path.join(work, "tune-.abc"))
        messages = []
        for raw in (proc.stdout + "\n" + proc.stderr).splitlines():
            match = _ABC2MIDI_MESSAGE.match(raw.strip())
            if match:
                line = int(match["line"])
                messages.append({"number": tune_at_line(line, starts), "level": match["level"].lower(),
                                 "line": line, "column": int(match["column"]), "message": match["text"]})
        count = len(os.listdir(work))
        if os.path.exists(midi_dir):
            shutil.rmtree(midi_dir)
        os.replace(work, midi_dir)
    finally:
        if os.path.exists(work):
            shutil.rmtree(work)
    return count, messages


# --- Rows in, corpus out ------------------------------------------------------------------------
FINDINGS_NAMES = tuple(f.name for f in FINDINGS_FIELDS)


def missing_columns(schema: pa.Schema) -> list[str]:
    """GENERATED columns a dataset lacks (findings may be missing: they are computed)."""
    return [f.name for f in GENERATED if f.name not in schema.names]


def with_findings(table: pa.Table) -> pa.Table:
    """``table`` (GENERATED columns) with the validator's findings columns, as VALIDATED.

    Findings already present are kept; when any findings column is missing, all are computed
    with ``folkrnn.transforms.validator.validate_tokens`` from the tokens and the truncated flag.
    """
    if all(name in table.schema.names for name in FINDINGS_NAMES):
        return table.select(VALIDATED.names).cast(VALIDATED)
    from folkrnn.transforms.validator import validate_tokens  # heavy (imports Beam): only when needed

    tokens = table.column("tokens").to_pylist()
    truncated = table.column("truncated").to_pylist()
    rows = [validate_tokens(t or [], bool(c)).as_row() for t, c in zip(tokens, truncated)]
    columns = {f.name: table.column(f.name) for f in GENERATED}
    for f in FINDINGS_FIELDS:
        columns[f.name] = pa.array([r[f.name] for r in rows], type=f.type)
    return pa.table(columns, schema=VALIDATED)


def with_titles_and_abc(table: pa.Table) -> pa.Table:
    """Missing titles filled with ``title_for(number, meter)`` and ``abc`` rewritten as printed.

    The corpus's ``abc`` is exactly the tune's block in its volume, whatever the input held.
    """
    numbers = table.column("number").to_pylist()
    meters = table.column("meter").to_pylist()
    titles = [plain_text(t) if t else title_for(n, m) for t, n, m in zip(table.column("title").to_pylist(), numbers, meters)]
    tokens = table.column("tokens").to_pylist()
    abc = [tune_abc({"number": n, "title": t, "tokens": k}) for n, t, k in zip(numbers, titles, tokens)]
    table = table.set_column(table.schema.get_field_index("title"), table.schema.field("title"),
                             pa.array(titles, pa.string()))
    return table.set_column(table.schema.get_field_index("abc"), table.schema.field("abc"), pa.array(abc, pa.string()))


def sort_by_number(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("number", "ascending")])).combine_chunks()


def split_volumes(table: pa.Table, per_volume: int = PER_VOLUME) -> list[pa.Table]:
    """The table (any order) as volumes of ``per_volume`` tunes in number order."""
    volume_ranges(table.column("number").to_pylist(), per_volume)  # raises on repeated numbers
    ordered = sort_by_number(table)
    return [ordered.slice(i, per_volume).combine_chunks() for i in range(0, ordered.num_rows, per_volume)]


def input_hash(table: pa.Table, **options: object) -> str:
    """SHA-256 of a volume's rows (Arrow IPC bytes) and the options that shape its outputs."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **options}, sort_keys=True).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def write_atomic(path: str, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """``folkrnn.schemas.files.atomic_write`` into a folder made if missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, data)


def corpus_partition(out_dir: str, volume: int) -> str:
    return os.path.join(out_dir, "corpus", f"volume={volume}", "part-0.parquet")


def write_corpus_partition(table: pa.Table, pages: Mapping[int, int] | None, path: str) -> None:
    """A volume's rows with their page as ``corpus/volume=V/part-0.parquet`` (schema CORPUS).

    The temporary file starts with a dot: Arrow and DuckDB skip such files when they list a dataset.
    """
    page = pa.array([(pages or {}).get(n) for n in table.column("number").to_pylist()], pa.int32())
    corpus = table.select(VALIDATED.names).append_column(CORPUS.field("page"), page).cast(CORPUS)
    write_atomic(path, lambda handle: pq.write_table(corpus, handle, compression="zstd"))


# Temporary names in the output folder: what atomic_write and temporary_name make for volume
# files and corpus partitions, the typesetting work folders and the MIDI folders being filled.
LEFTOVER_PATTERNS = (
    os.path.join("volumes", ".folkrnn-volume-*.tmp"),
    os.path.join("volumes", TYPESET_PREFIX + "*"),
    os.path.join("volumes", "midi", MIDI_PREFIX + "*"),
    os.path.join("corpus", "volume=*", ".part-0.parquet.*.tmp"),
)


def remove_leftovers(out_dir: str) -> list[str]:
    """Remove the temporary files and folders a killed run left in ``out_dir``; returns them.

    Only safe while no other run writes there (``folkrnn compile`` holds a lock on the folder).
    """
    found = [p for pattern in LEFTOVER_PATTERNS for p in glob.glob(os.path.join(glob.escape(out_dir), pattern))]
    for path in found:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    return found


# --- One volume, start to finish ----------------------------------------------------------------
@dataclass
class VolumeJob:
    """Everything one worker needs to build one volume (picklable: it crosses a process pool)."""

    table: pa.Table  # VALIDATED rows of the volume as read, in number order
    volume: int
    n_volumes: int
    book_title: str
    out_dir: str
    pdf: bool = True
    midi: bool = False
    input_hash: str = ""

    @property
    def stem(self) -> str:
        return os.path.join(self.out_dir, "volumes", volume_stem(self.volume, self.n_volumes))

    @property
    def midi_dir(self) -> str:
        return os.path.join(self.out_dir, "volumes", "midi", os.path.basename(self.stem))


def read_report(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def up_to_date(job: VolumeJob) -> bool:
    """The volume's outputs exist and were made from these rows with these options."""
    report = read_report(job.stem + ".report.json")
    if not report or report.get("input_hash") != job.input_hash:
        return False
    needed = [job.stem + ".abc", corpus_partition(job.out_dir, job.volume)]
    needed += [job.stem + ".pdf"] if job.pdf else []
    needed += [job.midi_dir] if job.midi else []
    if not all(os.path.exists(p) for p in needed):
        return False
    with open(job.stem + ".abc", "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest() == report.get("abc_sha256")


def build_volume(job: VolumeJob) -> dict:
    """Write the volume's ABC, PDF, MIDI, corpus partition and report; returns the report.

    The report is written last: a volume without a current report is rebuilt by the next run.
    """
    timings: dict[str, float] = {}
    began = start = time.perf_counter()
    table = with_titles_and_abc(job.table)
    rows = table.select(["number", "title", "meter", "mode", "valid"]).to_pylist()
    abc_text = write_volume_abc(rows, job.volume, job.n_volumes, job.book_title,
                                blocks=table.column("abc").to_pylist())
    write_atomic(job.stem + ".abc", abc_text)
    timings["abc"] = time.perf_counter() - start
    typeset: Typeset | None = None
    if job.pdf:
        start = time.perf_counter()
        entries = [Entry(r["number"], r["title"], r["meter"] or "", r["mode"] or "") for r in rows]
        typeset = typeset_volume(abc_text, job.stem + ".pdf", volume=job.volume, n_volumes=job.n_volumes,
                                 book_title=job.book_title, entries=entries)
        timings["pdf"] = time.perf_counter() - start
        timings.update({k: round(v, 3) for k, v in typeset.seconds.items()})
    elif os.path.exists(job.stem + ".pdf"):
        os.remove(job.stem + ".pdf")  # a PDF of other inputs would contradict the new ABC
    midi_files, midi_messages = 0, []
    if job.midi:
        start = time.perf_counter()
        midi_files, midi_messages = make_midi(abc_text, job.midi_dir)
        timings["midi"] = time.perf_counter() - start
    start = time.perf_counter()
    write_corpus_partition(table, typeset.pages if typeset else None, corpus_partition(job.out_dir, job.volume))
    timings["corpus"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - began
    report = volume_report(job, rows, abc_text, typeset, midi_files, midi_messages, timings)
    write_atomic(job.stem + ".report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


def volume_report(job: VolumeJob, rows: list[dict], abc_text: str, typeset: Typeset | None, midi_files: int,
                  midi_messages: list[dict], timings: dict[str, float]) -> dict:
    """Per-tune abcm2ps and abc2midi messages, with the counts a reader checks first."""
    by_number = {r["number"]: r for r in rows}
    tunes: dict[int, dict] = {}
    other: list[dict] = []
    for tool, messages in (("abcm2ps", typeset.messages if typeset else []), ("abc2midi", midi_messages)):
        for m in messages:
            if m["number"] is None or m["number"] not in by_number:
                other.append({"tool": tool, **m})
                continue
            row = by_number[m["number"]]
            entry = tunes.setdefault(m["number"], {"number": m["number"], "title": row["title"], "valid": row["valid"],
                                                   "abcm2ps": [], "abc2midi": []})
            entry[tool].append({k: m[k] for k in ("level", "line", "column", "message")})

    def count(tool: str, level: str, valid_only: bool = False) -> int:
        return sum(1 for t in tunes.values() if any(m["level"] == level for m in t[tool])
                   and (t["valid"] or not valid_only))

    missing = [r["number"] for r in rows if typeset and r["number"] not in typeset.pages]
    return {
        "volume": job.volume,
        "volumes": job.n_volumes,
        "book_title": job.book_title,
        "tunes": len(rows),
        "first": rows[0]["number"] if rows else None,
        "last": rows[-1]["number"] if rows else None,
        "valid_tunes": sum(1 for r in rows if r["valid"]),
        "input_hash": job.input_hash,
        "abc_sha256": hashlib.sha256(abc_text.encode("utf-8")).hexdigest(),
        "pdf": bool(typeset),
        "pages": typeset.page_count if typeset else None,
        "front_pages": typeset.front_pages if typeset else None,
        "abcm2ps_exit": typeset.returncode if typeset else None,
        "tunes_not_typeset": missing,
        "tunes_with_abcm2ps_errors": count("abcm2ps", "error"),
        "valid_tunes_with_abcm2ps_errors": count("abcm2ps", "error", valid_only=True),
        "tunes_with_abcm2ps_warnings": count("abcm2ps", "warning"),
        "midi_files": midi_files if job.midi else None,
        "tunes_with_abc2midi_errors": count("abc2midi", "error"),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "messages": [tunes[n] for n in sorted(tunes)],
        "other_messages": other,
    }
