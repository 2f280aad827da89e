"""What abcm2ps and abc2midi write about a volume, read: the page each tune starts on (from the
PostScript) and their messages, each tied to a tune and a line of the volume's ABC.

A message is a dict: number (the tune, None when it names none), level (error or warning),
line, column and message.
"""

from __future__ import annotations

import re

from folkrnn.transforms.abc.volume import TuneStarts, tune_at_line

# abcm2ps writes a ``%%Page:`` comment per page and ``% --- xref N`` where tune N starts.
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


def abcm2ps_messages(stderr: str, line_offset: int, starts: TuneStarts) -> list[dict]:
    """abcm2ps diagnostics as records: level, tune number, line and column in the volume's ABC.

    abcm2ps prints ``file:line:col: error: text`` followed by the source line and a caret; the
    echo lines are dropped, any other line is kept as a message of no tune. ``line_offset`` is
    the number of lines abcm2ps read before the volume's ABC.
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


def abc2midi_messages(output: str, starts: TuneStarts) -> list[dict]:
    """abc2midi's ``Error|Warning in line-char L-C : text`` lines as records; the rest is progress."""
    messages = []
    for raw in output.splitlines():
        match = _ABC2MIDI_MESSAGE.match(raw.strip())
        if match:
            line = int(match["line"])
            messages.append({"number": tune_at_line(line, starts), "level": match["level"].lower(),
                             "line": line, "column": int(match["column"]), "message": match["text"]})
    return messages
