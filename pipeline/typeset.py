"""A volume's PDF: abcm2ps typesets it twice, ghostscript turns the PostScript into the PDF.

Pass 1 typesets the title page, contents pages with placeholder page numbers and the tunes; the
PostScript says on which page each tune starts. Pass 2 typesets the same source with the real
page numbers and is read again: the tunes must not have moved (see
``folkrnn.transforms.abc.typeset_source`` for why they do not). abcm2ps runs in secure mode
(``-S``): the input is machine-made and must not include files or inject PostScript.

Ghostscript reads pass 2's PostScript with abcm2ps's note heads, clefs, accidentals, dots and
rests redefined as forms (``folkrnn.transforms.abc.postscript_glyphs``), so the PDF holds each
outline once: under half the size (a 3,000-tune volume 24 -> 10 MB) and a third less ghostscript
CPU time. It leaves the creation date, the file ID and the XMP packet (which repeats the date)
out of the PDF, so the same volume gives the same PDF bytes.

The tools work in a dot-prefixed folder beside the PDF (readers skip it; one a kill -9 leaves
behind is removed by the next run, ``books.remove_leftovers``, not left in /tmp), and the PDF
reaches its name through ``atomic_write``: the old file or the complete new one, never half.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from folkrnn.pipeline.subprocesses import run_tool
from folkrnn.schemas.files import atomic_write
from folkrnn.transforms.abc.postscript_glyphs import reuse_glyphs
from folkrnn.transforms.abc.tool_output import abcm2ps_messages, tune_pages
from folkrnn.transforms.abc.typeset_source import Entry, contents_pages, pdf_docinfo, typeset_source
from folkrnn.transforms.abc.volume import tune_start_lines

ABCM2PS_TIMEOUT = 300  # seconds; one pass over 3,000 tunes takes under one
GS_TIMEOUT = 900  # seconds; ghostscript takes some 4-8 s per 1,000 pages here
# pdfwrite to a PDF whose bytes depend only on the PostScript (no date, no random file ID).
GS_PDF = ["gs", "-q", "-dBATCH", "-dNOPAUSE", "-dSAFER", "-sDEVICE=pdfwrite", "-dOmitInfoDate", "-dOmitID",
          "-dOmitXMP"]
TYPESET_PREFIX = ".typeset-"  # the work folder's name starts so


@dataclass
class Typeset:
    pages: dict[int, int]  # tune number -> PDF page where it starts
    page_count: int
    front_pages: int
    messages: list[dict]  # abcm2ps's, as folkrnn.transforms.abc.tool_output reads them
    returncode: int
    seconds: dict[str, float] = field(default_factory=dict)


def _abcm2ps(source: str, workdir: str, name: str) -> tuple[str, subprocess.CompletedProcess]:
    src_path = os.path.join(workdir, f"{name}.abc")
    ps_path = os.path.join(workdir, f"{name}.ps")
    with open(src_path, "w", encoding="utf-8") as handle:
        handle.write(source)
    proc = run_tool(["abcm2ps", "-S", "-O", ps_path, src_path], ABCM2PS_TIMEOUT)
    # abcm2ps exits 1 when the input had errors; it still typesets what it could.
    if proc.returncode not in (0, 1) or not os.path.exists(ps_path):
        raise RuntimeError(f"abcm2ps failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    with open(ps_path, encoding="latin-1") as handle:
        return handle.read(), proc


def _ghostscript(postscript_path: str, docinfo: str, workdir: str, pdf_path: str) -> None:
    """The PostScript (and the document info) as the PDF ``pdf_path``.

    Ghostscript writes its file itself, so it writes into the work folder and ``atomic_write``
    copies the result to its name (a copy of a few MB beside the seconds ghostscript takes).
    """
    info_path = os.path.join(workdir, "docinfo.ps")
    with open(info_path, "w", encoding="ascii") as handle:
        handle.write(docinfo)
    made = os.path.join(workdir, "volume.pdf")
    gs = run_tool([*GS_PDF, f"-sOutputFile={made}", postscript_path, info_path], GS_TIMEOUT)
    if gs.returncode != 0:
        raise RuntimeError(f"ghostscript failed (exit {gs.returncode}): {(gs.stderr or gs.stdout).strip()[-300:]}")
    with open(made, "rb") as pdf:
        atomic_write(pdf_path, lambda handle: shutil.copyfileobj(pdf, handle))


def typeset_volume(abc_text: str, pdf_path: str, *, volume: int, n_volumes: int, book_title: str,
                   entries: Sequence[Entry], generated_by: str = "") -> Typeset:
    """Typeset a volume's ABC as a PDF with a title page, contents and an index by tune type;
    returns where each tune is. ``generated_by`` names the checkpoints on the title page."""
    seconds: dict[str, float] = {}
    starts = tune_start_lines(abc_text)
    folder = os.path.dirname(os.path.abspath(pdf_path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=TYPESET_PREFIX, dir=folder) as workdir:
        pages: dict[int, int] | None = None
        for attempt in ("pass1", "pass2"):
            source, offset = typeset_source(abc_text, book_title, volume, n_volumes, entries, pages,
                                            generated_by)
            start = time.perf_counter()
            postscript, proc = _abcm2ps(source, workdir, attempt)
            seconds[f"abcm2ps_{attempt}"] = time.perf_counter() - start
            found, page_count = tune_pages(postscript)
            if pages is not None and found != pages:
                raise RuntimeError("the tunes moved between the two typesetting passes; the contents would be wrong")
            pages = found
        messages = abcm2ps_messages(proc.stderr, offset, starts)
        start = time.perf_counter()
        with_forms = os.path.join(workdir, "volume.ps")
        with open(with_forms, "w", encoding="latin-1") as handle:
            handle.write(reuse_glyphs(postscript)[0])
        _ghostscript(with_forms, pdf_docinfo(book_title, volume, n_volumes, generated_by), workdir, pdf_path)
        seconds["ghostscript"] = time.perf_counter() - start
    return Typeset(pages=pages or {}, page_count=page_count, front_pages=1 + contents_pages(len(entries)),
                   messages=messages, returncode=proc.returncode, seconds=seconds)
