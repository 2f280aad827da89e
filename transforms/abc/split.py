"""Split ABC files into tunes, and read and write the folk-rnn text layout.

ABC 2.1: a file is a file header (an optional first block of fields) followed by tunes, each
starting with ``X:`` and ending at a blank line. Many collections also separate tunes only by
blank lines, without ``X:``; a block with a ``K:`` line is then a tune. File-header fields
(``L:``, ``M:``, ``R:`` ...) apply to every tune unless the tune sets them itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from folkrnn.schemas.vocab import MODE_TOKENS, TOKEN_TO_ID

_FIELD_LINE = re.compile(r"^[A-Za-z]:")
_BLANK_SPLIT = re.compile(r"\n[ \t]*\n")
_X_SPLIT = re.compile(r"(?m)^(?=X:)")
_X_LINE = re.compile(r"(?m)^X:")
INHERITED_FIELDS = set("LMRCOABDGHNSZI")


def _blocks(text: str) -> list[str]:
    return [b for b in _BLANK_SPLIT.split(text) if b.strip()]


def _is_tune_block(block: str) -> bool:
    return block.startswith("K:") or "\nK:" in block


def _file_header(block: str) -> list[str]:
    """The inheritable field lines of a file-header block."""
    return [
        line for line in block.split("\n")
        if _FIELD_LINE.match(line) and line[0] in INHERITED_FIELDS
    ]


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_abc(text: str) -> list[str]:
    """The tunes of an ABC file, in order, each with the file header's fields it inherits."""
    return list(iter_abc(text))


def iter_abc(text: str) -> Iterator[str]:
    """``split_abc`` one tune at a time."""
    text = normalize_newlines(text)
    yield from tunes_of_piece(text, file_header(text))


def file_header(text: str) -> list[str]:
    """The file header's inheritable field lines: from the file's first block, when that block
    comes before any ``X:`` and is not itself a tune. ``text`` (newlines normalized) may be just
    the file's beginning, as long as it ends where a tune may start (``transforms.byte_ranges``)."""
    if text.startswith("X:"):
        return []
    first_x = _X_LINE.search(text)
    preamble = text if first_x is None else text[:first_x.start()]
    for block in _BLANK_SPLIT.split(preamble):
        if block.strip():
            return [] if _is_tune_block(block) else _file_header(block)
    return []


def tunes_of_piece(text: str, header: list[str]) -> Iterator[str]:
    """The tunes in a piece of an ABC file (newlines normalized) that starts where a tune may
    start: at the file's beginning, at an ``X:`` line or after a blank line. Tunes start at ``X:``
    and end at a blank line; a later block of the same stretch is a tune when it has a ``K:`` line
    (collections that separate tunes by blank lines alone). So the tunes of consecutive pieces are
    the tunes of the whole text: the split of any file at such points changes nothing."""
    for tune in tune_blocks(text):
        yield _with_header(tune, header)


def tune_blocks(text: str) -> Iterator[str]:
    """The blocks of a piece (see ``tunes_of_piece``) that are tunes, without the file header."""
    parts = _X_SPLIT.split(text)
    preamble, chunks = ("", parts) if text.startswith("X:") else (parts[0], parts[1:])
    # the file header, if in this piece, is a block without K: and so no tune
    yield from (b for b in _blocks(preamble) if _is_tune_block(b))
    for chunk in chunks:
        blocks = _blocks(chunk)
        if not blocks:
            continue
        yield blocks[0]
        yield from (b for b in blocks[1:] if _is_tune_block(b))


def count_tunes(text: str) -> int:
    """How many tunes ``tunes_of_piece`` finds in a piece."""
    return sum(1 for _ in tune_blocks(text))


def _with_header(tune: str, header: list[str]) -> str:
    if not header:
        return tune.strip("\n")
    lines = tune.strip("\n").split("\n")
    # after the X: line so the tune stays valid ABC; its own fields come later and override
    at = 1 if lines[0].startswith("X:") else 0
    return "\n".join(lines[:at] + header + lines[at:])


# -- the folk-rnn text layout --------------------------------------------------------------

_FOLKRNN_METER_LINE = re.compile(r"M:\S+")
# Share of body tokens that must be vocabulary tokens: a misspelt token costs one tune (rejected as
# token_not_in_vocab), not the whole file; ABC written without spaces ("CDEF GABc|") is far below it.
FOLKRNN_TEXT_MIN_VOCAB_SHARE = 0.9


@dataclass
class LayoutTally:
    """What ``looks_like_folkrnn_text`` counts, added up piece by piece over a large file."""

    blocks: int = 0
    body_tokens: int = 0
    in_vocabulary: int = 0
    laid_out: bool = True  # every block so far has the layout

    def add(self, text: str) -> None:
        """Count the blocks of ``text`` (a piece that starts and ends at blank lines, or a whole file)."""
        if not self.laid_out:
            return
        for block in _blocks(normalize_newlines(text)):
            lines = [line.strip() for line in block.strip().split("\n")]
            if len(lines) < 3 or not _FOLKRNN_METER_LINE.fullmatch(lines[0]) or lines[1] not in MODE_TOKENS:
                self.laid_out = False
                return
            tokens = " ".join(lines[2:]).split()
            self.blocks += 1
            self.body_tokens += len(tokens)
            self.in_vocabulary += sum(token in TOKEN_TO_ID for token in tokens)

    @property
    def looks_like_folkrnn_text(self) -> bool:
        return (self.laid_out and self.blocks > 0 and self.body_tokens > 0
                and self.in_vocabulary >= FOLKRNN_TEXT_MIN_VOCAB_SHARE * self.body_tokens)


def looks_like_folkrnn_text(text: str) -> bool:
    """True when every block is laid out as folk-rnn writes its data: an ``M:`` line and a
    ``K:C<mode>`` line of one token each, then body tokens separated by spaces, nearly all of
    them in the vocabulary. ABC read that way would be garbled (or rejected as unparseable)."""
    tally = LayoutTally()
    tally.add(text)
    return tally.looks_like_folkrnn_text


def read_folkrnn_text(text: str) -> list[list[str]]:
    """Tunes of a folk-rnn data file: blocks of an M: line, a K: line and a line of tokens."""
    return list(iter_folkrnn_text(text))


def iter_folkrnn_text(text: str) -> Iterator[list[str]]:
    """``read_folkrnn_text`` one tune at a time; also of a piece that starts and ends at a blank line."""
    for block in _blocks(text.replace("\r\n", "\n")):
        tokens = block.split()
        if tokens:
            yield tokens


def write_folkrnn_text(tunes: Iterable[list[str]]) -> str:
    """The folk-rnn layout: per tune an M: line, a K: line, the body tokens; a blank line between."""
    return "".join(folkrnn_text_blocks(tunes))


def folkrnn_text_blocks(tunes: Iterable[list[str]]) -> Iterator[str]:
    """``write_folkrnn_text`` a tune at a time (to write a file of any size in bounded memory)."""
    first = True
    for tokens in tunes:
        head = [t for t in tokens[:2] if t.startswith(("M:", "K:"))]
        rest = tokens[len(head):]
        yield ("" if first else "\n") + "\n".join([*head, " ".join(rest)]) + "\n"
        first = False
    if first:
        yield "\n"
