"""Split ABC files into tunes, and read and write the folk-rnn text layout.

ABC 2.1: a file is a file header (an optional first block of fields) followed by tunes, each
starting with ``X:`` and ending at a blank line. Many collections also separate tunes only by
blank lines, without ``X:``; a block with a ``K:`` line is then a tune. File-header fields
(``L:``, ``M:``, ``R:`` ...) apply to every tune unless the tune sets them itself.
"""

from __future__ import annotations

import re

from folkrnn.schemas.vocab import MODE_TOKENS, TOKEN_TO_ID

_FIELD_LINE = re.compile(r"^[A-Za-z]:")
_BLANK_SPLIT = re.compile(r"\n[ \t]*\n")
INHERITED_FIELDS = set("LMRCOABDGHNSZI")


def _blocks(text: str) -> list[str]:
    return [b for b in _BLANK_SPLIT.split(text) if b.strip()]


def _is_tune_block(block: str) -> bool:
    return any(line.startswith("K:") for line in block.split("\n"))


def _file_header(block: str) -> list[str]:
    """The inheritable field lines of a file-header block."""
    return [
        line for line in block.split("\n")
        if _FIELD_LINE.match(line) and line[0] in INHERITED_FIELDS
    ]


def split_abc(text: str) -> list[str]:
    """The tunes of an ABC file, in order, each with the file header's fields it inherits."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts = re.split(r"(?m)^(?=X:)", text)
    preamble, chunks = ("", parts) if text.startswith("X:") else (parts[0], parts[1:])
    header: list[str] = []
    tunes: list[str] = []
    pre_blocks = _blocks(preamble)
    if pre_blocks and not _is_tune_block(pre_blocks[0]):
        header = _file_header(pre_blocks[0])
        pre_blocks = pre_blocks[1:]
    # tunes without X: before the first X: (or in a file that has none)
    tunes.extend(_with_header(b, header) for b in pre_blocks if _is_tune_block(b))
    for chunk in chunks:
        blocks = _blocks(chunk)
        if not blocks:
            continue
        tunes.append(_with_header(blocks[0], header))
        tunes.extend(_with_header(b, header) for b in blocks[1:] if _is_tune_block(b))
    return tunes


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


def looks_like_folkrnn_text(text: str) -> bool:
    """True when every block is laid out as folk-rnn writes its data: an ``M:`` line and a
    ``K:C<mode>`` line of one token each, then body tokens separated by spaces, nearly all of
    them in the vocabulary. ABC read that way would be garbled (or rejected as unparseable)."""
    blocks = _blocks(text.replace("\r\n", "\n").replace("\r", "\n"))
    if not blocks:
        return False
    body_tokens = in_vocabulary = 0
    for block in blocks:
        lines = [line.strip() for line in block.strip().split("\n")]
        if len(lines) < 3 or not _FOLKRNN_METER_LINE.fullmatch(lines[0]) or lines[1] not in MODE_TOKENS:
            return False
        tokens = " ".join(lines[2:]).split()
        body_tokens += len(tokens)
        in_vocabulary += sum(token in TOKEN_TO_ID for token in tokens)
    return body_tokens > 0 and in_vocabulary >= FOLKRNN_TEXT_MIN_VOCAB_SHARE * body_tokens


def read_folkrnn_text(text: str) -> list[list[str]]:
    """Tunes of a folk-rnn data file: blocks of an M: line, a K: line and a line of tokens."""
    tunes = []
    for block in _blocks(text.replace("\r\n", "\n")):
        tokens = block.split()
        if tokens:
            tunes.append(tokens)
    return tunes


def write_folkrnn_text(tunes: list[list[str]]) -> str:
    """The folk-rnn layout: per tune an M: line, a K: line, the body tokens; a blank line between."""
    blocks = []
    for tokens in tunes:
        head = [t for t in tokens[:2] if t.startswith(("M:", "K:"))]
        rest = tokens[len(head):]
        blocks.append("\n".join([*head, " ".join(rest)]))
    return "\n\n".join(blocks) + "\n"
