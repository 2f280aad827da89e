"""A large ABC collection of a given size, made deterministically from the dance tunes shipped with
music21 (O'Neill's 1850 and Ryan's Mammoth): ``python -m benchmarks.abc_corpus OUT.abc 1G``.

Tune ``i`` is base tune ``i % N`` (N base tunes), varied by ``v = i // N``: a few notes moved a step
(so its tokens differ from the other variants'), the whole tune moved 0-2 letters up or down with
its key (a transposition, which the ingest undoes), a new ``X:`` number and a title that says which
variant it is. About 1 in 20 tunes repeats an earlier one under a new number and title (a
duplicate: same tokens), about 1 in 30 is broken in one of four ways (a reject). The file starts
with a file header (``L:1/8``, ``R:``) that tunes written in eighths inherit instead of their own
``L:``; most tunes are separated by a blank line, some follow the previous one directly, and some
have no ``X:`` line at all (ABC 2.1 still splits them at the blank line), so every way of finding
a tune boundary is exercised.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from functools import lru_cache

from folkrnn.pipeline.ingest import byte_size
from folkrnn.schemas.files import atomic_write
from folkrnn.transforms.abc.split import split_abc
from folkrnn.transforms.records import decode_text

FILE_HEADER = ("%abc-2.1\n% A generated collection (benchmarks/abc_corpus.py): varied dance tunes\n"
               "L:1/8\nR:reel\n\n")
COLLECTIONS = ("oneills1850", "ryansMammoth")
KEPT_FIELDS = set("TMLRKBNZS")  # the header fields a generated tune keeps (besides X:)
PITCHES = "CDEFGABcdefgab"
DUPLICATE_EVERY, DUPLICATE_AT, DUPLICATE_BACK = 20, 7, 5
BROKEN_EVERY, BROKEN_AT = 30, 13
NO_BLANK_EVERY, NO_X_EVERY = 7, 11
BROKEN = (("K", None), ("M", "5/4"), ("K", "F lydian"), ("L", "1/0"))  # field -> value (None: drop it)

# A note letter with its accidentals and octave marks; quoted text, !decorations! and [inline:fields]
# are matched first, so that their letters are left alone.
_NOTE_OR_SKIP = re.compile(r'"[^"]*"|![^!]*!|\+[^+\n]*\+|\[[A-Za-z]:[^\]]*\]|([_^=]*)([A-Ga-g])([,\']*)')


@lru_cache(maxsize=1)
def base_tunes() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """(header lines, body lines) of every dance tune of the collections, in a fixed order."""
    from music21 import corpus

    tunes = []
    for path in sorted(str(p) for p in corpus.getCorePaths(fileExtensions=["abc"])):
        if os.path.basename(os.path.dirname(path)) not in COLLECTIONS:
            continue
        with open(path, "rb") as handle:
            text = decode_text(handle.read())[0]
        for tune in split_abc(text):
            tunes.append(_header_and_body(tune))
    return tuple(t for t in tunes if t[1] and any(line.startswith("K:") for line in t[0]))


def _header_and_body(tune: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    lines = [line.rstrip() for line in tune.split("\n")]
    end = next((i + 1 for i, line in enumerate(lines) if line.startswith("K:")), len(lines))
    header = [re.sub(r"^([A-Za-z]):\s*", r"\1:", line) for line in lines[:end]]
    header = [line for line in header if line[:1] in KEPT_FIELDS and line[1:2] == ":"]
    return tuple(header), tuple(line for line in lines[end:] if line.strip() and not line.startswith("%"))


def _move(match: re.Match, steps: int) -> str:
    accidentals, letter, marks = match.groups(default="")
    if not letter:
        return match.group(0)
    height = PITCHES.index(letter) + 7 * (marks.count("'") - marks.count(",")) + steps
    if height < 0:
        return accidentals + PITCHES[height % 7] + "," * (-(height // 7))
    if height >= 14:
        return accidentals + PITCHES[7 + height % 7] + "'" * (height // 7 - 1)
    return accidentals + PITCHES[height]


def _varied_body(body: tuple[str, ...], variant: int, steps: int) -> list[str]:
    """The body moved ``steps`` letters, with the notes at the digits of ``variant`` (written in
    base "number of notes") moved one step more: each variant of a tune has other tokens."""
    notes = [(i, m.start()) for i, line in enumerate(body) for m in _NOTE_OR_SKIP.finditer(line) if m.group(2)]
    nudged = set()
    rest = variant
    while rest and notes:
        rest, digit = divmod(rest, len(notes))
        nudged.add(notes[digit])
    out = []
    for i, line in enumerate(body):
        out.append(_NOTE_OR_SKIP.sub(
            lambda m, i=i: _move(m, steps + ((i, m.start()) in nudged)), line))
    return out


def _moved_key(value: str, steps: int) -> str:
    """``K:`` moved ``steps`` letters when its tonic has no accidental (its mode kept), else as it was."""
    match = re.match(r"\s*([A-G])(?![#b])", value)
    if not match or not steps:
        return value
    return PITCHES[(PITCHES.index(match.group(1)) + steps) % 7] + value[match.end():]


def tune_text(i: int) -> str:
    """Generated tune ``i`` (no trailing newline): deterministic, whatever else is generated."""
    if i % DUPLICATE_EVERY == DUPLICATE_AT and i >= DUPLICATE_BACK:
        return _renumbered(tune_text(i - DUPLICATE_BACK), i, "again")
    pool = base_tunes()
    header, body = pool[i % len(pool)]
    variant = i // len(pool)
    steps = (0, 1, -1, 2, -2)[variant % 5]
    fields = []
    for line in header:
        name, value = line[0], line[2:]
        if name == "T":
            value = f"{value} (variant {variant})" if variant else value
        elif name == "K":
            value = _moved_key(value, steps)
        elif name == "L" and value.replace(" ", "") == "1/8":
            continue  # inherited from the file header
        fields.append(f"{name}:{value}")
    if i % BROKEN_EVERY == BROKEN_AT:
        fields = _broken(fields, BROKEN[(i // BROKEN_EVERY) % len(BROKEN)])
    if i % NO_X_EVERY != 5:
        fields.insert(0, f"X:{i + 1}")
    return "\n".join(fields + _varied_body(body, variant, steps))


def _renumbered(text: str, i: int, note: str) -> str:
    lines = [line for line in text.split("\n") if not line.startswith("X:")]
    lines = [f"{line} ({note})" if line.startswith("T:") else line for line in lines]
    return "\n".join([f"X:{i + 1}", *lines])


def _broken(fields: list[str], how: tuple[str, str | None]) -> list[str]:
    name, value = how
    kept = [f for f in fields if not f.startswith(f"{name}:")]
    if value is None:
        return kept
    at = next((k for k, f in enumerate(kept) if f.startswith("K:")), len(kept))
    return kept[:at] + [f"{name}:{value}"] + kept[at:]


def generate(size: int) -> Iterator[str]:
    """Text of a collection of at least ``size`` bytes (UTF-8): the file header, then tunes."""
    yield FILE_HEADER
    written, i = len(FILE_HEADER.encode("utf-8")), 0
    while written < size:
        text = tune_text(i)
        joined = (text if i % NO_BLANK_EVERY == 3 and "X:" in text[:2] else "\n" + text) + "\n"
        yield joined
        written += len(joined.encode("utf-8"))
        i += 1


def write_corpus(path: str, size: int) -> int:
    """Write the collection of ``size`` bytes (or just over) to ``path``, atomically; returns the
    tunes written."""
    tunes = -1  # the file header is the first piece

    def write(handle) -> None:
        nonlocal tunes
        for piece in generate(size):
            handle.write(piece.encode("utf-8"))
            tunes += 1

    atomic_write(path, write)
    return tunes


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.abc_corpus OUT.abc SIZE  (e.g. 20M, 1G)")
    count = write_corpus(sys.argv[1], byte_size(sys.argv[2]))
    print(f"{sys.argv[1]}: {count} tunes, {os.path.getsize(sys.argv[1])} bytes")
