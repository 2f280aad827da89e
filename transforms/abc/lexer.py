"""Read an ABC tune body into musical elements, dropping what the vocabulary cannot say.

The lexer is one left-to-right pass. What it removes (comments, chord symbols, decorations,
grace notes, slurs, ties ...) is counted by kind in ``Body.removed``; what it cannot represent
without guessing (voices, mid-tune meter or key changes, multi-bar rests ...) raises
``TuneRejected`` with the position in the body.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from folkrnn.schemas.music import (
    ACCIDENTALS,
    BAR_EIGHTHS,
    COMPOUND_METERS,
    EIGHTH,
    LETTERS,
    tuplet_q,
    tuplet_ratio,
)
from folkrnn.schemas.vocab import TUPLET_TOKENS
from folkrnn.transforms.abc.errors import TuneRejected
from folkrnn.transforms.abc.header import parse_key, parse_meter, parse_unit_length


@dataclass(frozen=True, slots=True)
class Note:
    letter: int  # 0..6 for C..B
    octave: int  # scientific octave: C (upper case, no marks) is octave 4
    accidental: int | None  # explicit accidental -2..2 (0 is a natural sign), None when not written
    length: Fraction  # in whole notes


@dataclass(slots=True)
class Rest:
    length: Fraction


@dataclass(slots=True)
class Chord:
    notes: list[Note]
    length: Fraction  # of the chord as a whole (its first note's length times the multiplier)


@dataclass(slots=True)
class Tuplet:
    p: int


@dataclass(slots=True)
class Broken:
    direction: str  # ">" or "<"
    count: int  # 1 for ">", 2 for ">>" ...


@dataclass(slots=True)
class Bar:
    token: str  # one of | |: :| |1 |2


Element = Note | Rest | Chord | Tuplet | Broken | Bar


@dataclass
class Body:
    elements: list[Element] = field(default_factory=list)
    removed: Counter = field(default_factory=Counter)


# Fields that may stand on their own line inside a body and carry nothing we keep.
IGNORED_BODY_FIELDS = set("NPQRTIZHSDOBCGFAr+s")
SINGLE_CHAR_DECORATIONS = set(".~HLMOPSTuvJRWhijklmnopqrstwy")
# Only tags that cannot be ABC: "<b>" or "<a>" could be broken rhythms around notes ("A<b>c").
HTML_TAG_RE = re.compile(
    r"</[a-zA-Z][a-zA-Z0-9]*\s*>|<(?:br|pre|div|span|html|body|head|font|table|tr|td|code|tt|hr|p|i)\b[^<>]*>"
    r"|<a\s+href=[^<>]*>",
    re.IGNORECASE,
)
HTML_ENTITY_RE = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")

_NOTE_RE = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)(\d*/*\d*)")  # with its length
_LENGTH_RE = re.compile(r"(\d*)(/*)(\d*)")
_NOTE_START = frozenset("^_=ABCDEFGabcdefg")
_NOTE_RUN_RE = re.compile(r"(?:(?:\^\^|\^|__|_|=)?[A-Ga-g][,']*\d*/*\d*)+")
_BAR_RE = re.compile(r":*(?:\[\||\|\]|\|+|\.\|)\]?:*|:{2,}")
_ENDING_RE = re.compile(r"\s*\[?([0-9])(?![0-9/])([-,][0-9])?")
_TUPLET_RE = re.compile(r"\((\d)(?::(\d?)(?::(\d?))?)?")
_INLINE_FIELD_RE = re.compile(r"\[([A-Za-z]):([^\]\n]*)\]")


def parse_length(text: str, pos: int) -> tuple[Fraction, int]:
    """Read an ABC length multiplier at ``pos``: '', 2, /2, /, //, 3/2, 3/ ..."""
    match = _LENGTH_RE.match(text, pos)
    written = match.group(0)
    value = _LENGTHS.get(written)
    if value is None:
        value = _length_value(match, pos)
        if len(_LENGTHS) < _CACHE_LIMIT:
            _LENGTHS[written] = value
    return value, match.end()


# Fractions are slow to make (pure Python): lengths and notes as written, read again and again, are
# made once. Bounded, so that odd input cannot grow them without end.
_CACHE_LIMIT = 4096
_LENGTHS: dict[str, Fraction] = {}  # written length -> its value
_NOTES: dict[tuple[str, int, int], Note] = {}  # (written, unit) -> the note (frozen: shared)
_RUNS: dict[tuple[str, int, int], tuple[Note, ...]] = {}  # (notes written together, unit) -> the notes


def _length_value(match: re.Match, pos: int) -> Fraction:
    num, slashes, den = match.groups()
    if not slashes:
        return Fraction(int(num)) if num else Fraction(1)
    value = Fraction(int(num)) if num else Fraction(1)
    if den:
        if int(den) == 0:
            raise TuneRejected("tokenize", "unparseable", f"zero length divisor at body position {pos}")
        value /= int(den) * 2 ** (len(slashes) - 1)
    else:
        value /= 2 ** len(slashes)
    return value


class _Lexer:
    def __init__(self, text: str, unit: Fraction, meter_token: str, key_text: str):
        self.text = text
        self.set_unit(unit)
        self.meter_token = meter_token
        self.key = parse_key(key_text)
        self.body = Body()
        self.pos = 0
        self.line_closed_bar = False  # the last line break ended a full bar: a bar line if music follows

    def set_unit(self, unit: Fraction) -> None:
        self.unit = unit
        self.unit_key = (unit.numerator, unit.denominator)

    def reject(self, reason: str, detail: str) -> TuneRejected:
        line = self.text.count("\n", 0, self.pos) + 1
        snippet = self.text[max(0, self.pos - 15): self.pos + 15].replace("\n", " ")
        return TuneRejected("tokenize", reason, f"{detail} (body line {line}, near {snippet!r})")

    def removed(self, kind: str) -> None:
        self.body.removed[kind] += 1

    def emit(self, element: Element) -> None:
        if self.line_closed_bar:  # music follows; a written bar line would have cleared it (add_bar)
            self.line_closed_bar = False
            self.body.elements.append(Bar("|"))
            self.removed("line_breaks_read_as_bar_lines")
        self.body.elements.append(element)

    # -- fields inside the body -------------------------------------------------------------
    def body_field(self, name: str, value: str) -> None:
        if name == "V":
            raise self.reject("voices", "several voices (V:) cannot be one token sequence")
        if name == "M":
            if parse_meter(value).token_meter != self.meter_token:
                raise self.reject("meter_change", f"the meter changes mid-tune to M:{value.strip()}")
            return
        if name == "K":
            if parse_key(value) != self.key:
                raise self.reject("key_change", f"the key changes mid-tune to K:{value.strip()}")
            return
        if name == "L":
            self.set_unit(parse_unit_length(value))
            return
        if name in "wW":
            self.removed("lyrics")
            return
        if name == "X":
            raise self.reject("unparseable", "a second X: field inside one tune")
        self.removed("fields")

    # -- the main loop ---------------------------------------------------------------------
    def run(self) -> Body:
        text = self.text
        n = len(text)
        at_line_start = True
        while self.pos < n:
            ch = text[self.pos]
            if at_line_start and ch.isalpha() and text.startswith(":", self.pos + 1) and (
                text[self.pos + 2: self.pos + 3] not in ("|", ":")
            ):
                end = text.find("\n", self.pos)
                end = n if end < 0 else end
                self.body_field(ch, text[self.pos + 2: end])
                self.pos = end
                continue
            at_line_start = False
            # the most frequent characters first: no branch below matches a note letter or a space
            if ch in _NOTE_START:
                self.notes()
            elif ch == " ":
                self.pos += 1
            elif ch == "\n":
                at_line_start = True
                self.pos += 1
                self.line_end()
            elif ch in " \t\r`":
                self.pos += 1
            elif ch == "%":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
                self.removed("comments")
            elif ch == "\\":
                self.pos += 1
                self.removed("line_continuations")
            elif ch == '"':
                end = text.find('"', self.pos + 1)
                if end < 0:
                    raise self.reject("unparseable", "a chord symbol or annotation opens with \" and never closes")
                self.pos = end + 1
                self.removed("chord_symbols")
            elif ch in "!+":
                end = text.find(ch, self.pos + 1)
                newline = text.find("\n", self.pos + 1)
                if end < 0 or (0 <= newline < end):
                    self.pos += 1  # the old "!" line break, or a stray "+"
                    self.removed("line_breaks" if ch == "!" else "stray_characters")
                else:
                    self.pos = end + 1
                    self.removed("decorations")
            elif ch == "{":
                end = text.find("}", self.pos)
                if end < 0:
                    raise self.reject("unparseable", "grace notes open with { and never close")
                self.pos = end + 1
                self.removed("grace_notes")
            elif ch == "(":
                self.open_paren()
            elif ch == ")":
                self.pos += 1
                self.removed("slurs")
            elif ch == "-":
                self.pos += 1
                self.removed("ties")
            elif text.startswith("[|]", self.pos):
                self.pos += 3  # an invisible bar line: nothing to hear or count
                self.removed("invisible_bars")
            elif ch in "|:" or (ch == "[" and text.startswith("[|", self.pos)) or (
                ch == "." and text.startswith(".|", self.pos)
            ):
                self.bar()
            elif ch == "[":
                self.open_bracket()
            elif ch in "zx":
                self.pos += 1
                length, self.pos = parse_length(text, self.pos)
                self.emit(Rest(length * self.unit))
            elif ch in "ZX":
                raise self.reject("multibar_rest", "a multi-bar rest (Z) has no token; write the bars as z rests")
            elif ch in "<>":
                start = self.pos
                while self.pos < n and text[self.pos] == ch:
                    self.pos += 1
                self.emit(Broken(ch, self.pos - start))
            elif ch == "&":
                raise self.reject("voices", "a voice overlay (&) cannot be one token sequence")
            elif ch in SINGLE_CHAR_DECORATIONS:
                self.pos += 1
                self.removed("decorations")
            elif ch in "$*;#?@'',":
                self.pos += 1
                self.removed("stray_characters")
            else:
                raise self.reject("unparseable", f"unexpected character {ch!r}")
        return self.body

    def open_paren(self) -> None:
        match = _TUPLET_RE.match(self.text, self.pos)
        if not match:
            self.pos += 1
            self.removed("slurs")
            return
        p = int(match.group(1))
        q = match.group(2)
        r = match.group(3)
        if f"({p}" not in TUPLET_TOKENS:
            raise self.reject("tuplet_not_in_vocab", f"tuplet ({p} is not in the vocabulary")
        if q and int(q) != tuplet_q(p, self.meter_token in COMPOUND_METERS):
            raise self.reject("tuplet_not_in_vocab", f"tuplet {match.group(0)} has a ratio the vocabulary cannot say")
        if r and int(r) != p:
            raise self.reject("tuplet_not_in_vocab", f"tuplet {match.group(0)} spans a different number of notes")
        self.pos = match.end()
        self.emit(Tuplet(p))

    def line_end(self) -> None:
        """Read a line break that closes a full bar as a bar line.

        The Essen folk songs (one phrase per line) leave out the bar line at the end of a line
        whenever the phrase ends on a bar line, and keep it out of the middle of a bar when the
        next phrase starts with a pickup. So a line ending exactly on a full bar with no bar line
        written ends that bar when more music follows; read literally, the two bars would merge
        into one twice too long. (At the end of the tune nothing is added.)
        """
        bar_so_far: list[Element] = []
        for element in reversed(self.body.elements):
            if isinstance(element, Bar):
                break
            bar_so_far.append(element)
        bar_so_far.reverse()
        if bar_so_far and bar_duration(bar_so_far, self.meter_token) == BAR_EIGHTHS[self.meter_token] * EIGHTH:
            self.line_closed_bar = True

    def bar(self) -> None:
        match = _BAR_RE.match(self.text, self.pos)
        if not match:
            raise self.reject("unparseable", "a stray ':'")
        written = match.group(0)
        self.pos = match.end()
        left = written.rstrip(":") != written or written.startswith("::")
        right = written.lstrip(":") != written
        if written == "::" or set(written) == {":"}:
            left = right = True
        tokens = []
        if right:
            tokens.append(":|")
        if left:
            tokens.append("|:")
        if not tokens:
            tokens.append("|")
        ending = _ENDING_RE.match(self.text, self.pos)
        if ending and (self.text[self.pos: ending.end()].strip().startswith("[") or not left):
            if ending.group(2):
                raise self.reject("ending_not_in_vocab", f"ending {ending.group(0).strip()} covers several repeats")
            number = ending.group(1)
            if number not in "12":
                raise self.reject("ending_not_in_vocab", f"ending {number} is not in the vocabulary (only 1 and 2)")
            self.pos = ending.end()
            if tokens == ["|"]:
                tokens = [f"|{number}"]
            else:
                tokens.append(f"|{number}")
        for token in tokens:
            self.add_bar(token)

    def add_bar(self, token: str) -> None:
        self.line_closed_bar = False  # a bar line written at the start of the next line stands for itself
        elements = self.body.elements
        # "| [1" written with a space is one bar line carrying the ending
        if token in ("|1", "|2") and elements and isinstance(elements[-1], Bar) and elements[-1].token == "|":
            elements[-1] = Bar(token)
            return
        # bar lines with nothing between them ("||" split by a line break, "| |:") are one bar line
        if elements and isinstance(elements[-1], Bar):
            if token == "|":
                return
            if elements[-1].token == "|":
                elements[-1] = Bar(token)
                return
        self.emit(Bar(token))

    def open_bracket(self) -> None:
        field_match = _INLINE_FIELD_RE.match(self.text, self.pos)
        if field_match:
            self.pos = field_match.end()
            self.body_field(field_match.group(1), field_match.group(2))
            return
        ending = re.match(r"\[([0-9])", self.text[self.pos:])
        if ending:
            number = ending.group(1)
            if number not in "12":
                raise self.reject("ending_not_in_vocab", f"ending {number} is not in the vocabulary (only 1 and 2)")
            self.pos += 2
            if re.match(r"[-,][0-9]", self.text[self.pos: self.pos + 2]):
                raise self.reject("ending_not_in_vocab", "an ending covering several repeats")
            self.add_bar(f"|{number}")
            return
        self.chord()

    def chord(self) -> None:
        self.pos += 1
        notes: list[Note] = []
        while True:
            if self.pos >= len(self.text):
                raise self.reject("unparseable", "a chord opens with [ and never closes")
            ch = self.text[self.pos]
            if ch == "]":
                self.pos += 1
                break
            if ch in "^_=" or ch in "ABCDEFGabcdefg":
                notes.append(self.note())
            elif ch == '"':
                end = self.text.find('"', self.pos + 1)
                if end < 0:
                    raise self.reject("unparseable", "an annotation inside a chord never closes")
                self.pos = end + 1
                self.removed("chord_symbols")
            elif ch in " -)(" or ch in SINGLE_CHAR_DECORATIONS:
                self.pos += 1
                self.removed("decorations" if ch not in " " else "spaces")
            elif ch == "!":
                end = self.text.find("!", self.pos + 1)
                self.pos = (end + 1) if end > 0 else self.pos + 1
                self.removed("decorations")
            else:
                raise self.reject("unparseable", f"unexpected {ch!r} inside a chord")
        if not notes:
            raise self.reject("unparseable", "an empty chord []")
        multiplier, self.pos = parse_length(self.text, self.pos)
        self.emit(Chord(notes, notes[0].length * multiplier))

    def notes(self) -> None:
        """A run of notes written without anything between them ("A2B/c"): one regex match for all."""
        run = _NOTE_RUN_RE.match(self.text, self.pos)
        if not run:
            raise self.reject("unparseable", "an accidental without a note")
        key = (run.group(0), *self.unit_key)
        notes = _RUNS.get(key)
        if notes is None:
            notes = tuple(_NOTES.get((match.group(0), *self.unit_key)) or self._new_note(match, self.pos)
                          for match in _NOTE_RE.finditer(run.group(0)))
            if len(_RUNS) < 16 * _CACHE_LIMIT:
                _RUNS[key] = notes
        self.emit(notes[0])  # a line break read as a bar line goes before it
        self.body.elements.extend(notes[1:])
        self.pos = run.end()

    def note(self) -> Note:
        match = _NOTE_RE.match(self.text, self.pos)
        if not match:
            raise self.reject("unparseable", "an accidental without a note")
        note = _NOTES.get((match.group(0), *self.unit_key)) or self._new_note(match, 0)
        self.pos = match.end()
        return note

    def _new_note(self, match: re.Match, offset: int) -> Note:
        """The note of a ``_NOTE_RE`` match in ``self.text[offset:]``."""
        accidental_text, letter_text, marks, _ = match.groups()
        length, _ = parse_length(self.text, offset + match.start(4))
        octave = (4 if letter_text.isupper() else 5) + marks.count("'") - marks.count(",")
        accidental = None if accidental_text is None else ACCIDENTALS[accidental_text]
        note = Note(LETTERS.index(letter_text.upper()), octave, accidental, length * self.unit)
        if len(_NOTES) < _CACHE_LIMIT:
            _NOTES[(match.group(0), *self.unit_key)] = note
        return note


def bar_duration(elements: list[Element], meter_token: str) -> Fraction:
    """Length in whole notes of the notes, chords and rests of one bar, tuplets applied.

    Broken rhythms move time between two notes and leave the sum as it is.
    """
    total = Fraction(0)
    ratio, left = Fraction(1), 0
    compound = meter_token in COMPOUND_METERS
    for element in elements:
        if isinstance(element, Tuplet):
            ratio, left = tuplet_ratio(element.p, compound), element.p
        elif isinstance(element, (Note, Rest, Chord)):
            total += element.length * (ratio if left else 1)
            left = max(0, left - 1)
    return total


def clean_html(text: str) -> tuple[str, int]:
    """Remove stray HTML tags and entities that scraped pages leave in ABC."""
    count = 0

    def unescape(match: re.Match) -> str:
        nonlocal count
        char = html.unescape(match.group(0))
        count += char != match.group(0)
        return char.replace("\xa0", " ")  # &nbsp; separates like a space

    text = HTML_ENTITY_RE.sub(unescape, text)
    text, tags = HTML_TAG_RE.subn("", text)
    return text, count + tags


def lex_body(text: str, unit: Fraction, meter_token: str, key_text: str) -> Body:
    """The body's musical elements, lengths in whole notes; raises TuneRejected."""
    text, html = clean_html(text)
    lexer = _Lexer(text, unit, meter_token, key_text)
    if html:
        lexer.body.removed["html"] += html
    return lexer.run()
