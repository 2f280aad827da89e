"""The tune validator: is a folk-rnn v2 token sequence a well-formed tune, and what shape has it?

``validate_tokens`` is a pure function that never raises: any sequence at all (a model's
output, an empty list, unknown strings) gets a verdict, a ``Findings``. A tune is valid when
its header, its bar lengths and its repeat structure are all right; every failure is a
problem record (a reason code from ``REASON_CODES``, where it is, and a message).

Positions in problem records:

* ``token``: 0-based index into the token list exactly as given (a leading ``<s>`` counts).
* ``bar``: 0-based index of the written bar (the notes between two bar lines; a pickup, when
  there is one, is bar 0). Problems in the header or after ``</s>`` have bar -1.

Lengths are in units of L:1/8, computed exactly: every length is an integer number of ticks,
``TICKS_PER_UNIT`` ticks to the unit, a number divisible by every denominator a note of the
vocabulary can need (durations /8 and /3, broken rhythms /4, tuplets 2..9). Integers are much
faster than Fractions; the rare length that still does not divide (stacked modifiers of junk
input) silently becomes a Fraction, so results stay exact.

Choices the rules leave open, made here:

* A chord's length is the duration written after ``]``, times the duration of its first note
  when the inner notes carry durations (the ABC 2.1 rule; either one alone is the usual case).
* For cadences a chord counts by its lowest note.
* A tonic is a C of any octave with no accidental or a natural sign (``C``, ``c'``, ``=C,``);
  ``^C`` and ``_c`` are not. Accidentals are read per token: an earlier ``^c`` in the bar is
  not carried over to a later ``c``.
* ``:|`` repeats back to the last ``|:`` or to the end of the previous section (common
  practice: ``A :| B :|`` plays AABB), or to the start of the tune.
* A second ending ends at the next section sign, at the end of the tune, or once it has as
  many bars as the first ending.
* Consecutive bar tokens (``:| |:``, ``:| |2``) form one bar line.

Bar lengths. A bar longer than the meter is always wrong. A short bar is fine when it is:

* the tune's first bar (the pickup), whether or not the last bar completes it;
* half of a bar split by a repeat sign (``d 4 :| |: e 4`` in 4/4);
* half of a bar split by a section boundary the tokens cannot show: two short bars that add
  up to one full bar, either side of a plain ``|``, with full bars around them. The ingest
  writes ``||`` as ``|`` (the vocabulary has no double bar), so ``... D 2 z || A | ...`` in 2/4
  arrives as ``D 2 z | A``; the plain bar line then starts a new section, as ``||`` would;
* a section's first bar right after a repeat sign (the section's pickup, like the tune's);
* a section's (or ending's) last bar that completes the tune's pickup or a section's first
  bar, or a section's first bar that such a last bar completes.

Still flagged on purpose, although real collections have them (the ground truth in
tests/test_validate_groundtruth.py counts them): a last bar written short with nothing to
complete (``D 3 D 2 :|`` in 6/8 with no pickup; the final note lacks its full value); a bar of
exactly two bars (a missing bar line); a mid-tune bar a note short or long; a bar whose
``(5`` was meant as five in the time of four. In generated tunes each is a real mistake.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.vocab import (
    BAR_TOKENS,
    BROKEN_TOKENS,
    CHORD_CLOSE,
    CHORD_OPEN,
    DURATIONS,
    END,
    METER_TOKENS,
    METERS,
    MODE_TOKENS,
    PITCH_TOKENS,
    REST,
    START,
    TUPLET_TOKENS,
)

# Every reason code, with what it means. REASON_CODES is the stable tuple of codes.
REASON_DESCRIPTIONS: dict[str, str] = {
    "truncated": "the tune was cut off (generation hit its length limit)",
    "missing_meter": "no M: token at the start",
    "missing_key": "no K: token at the start",
    "duplicate_meter": "more than one M: token in the header",
    "duplicate_key": "more than one K: token in the header",
    "header_order": "the header is not M: then K:",
    "header_in_body": "an M: or K: token inside the body",
    "misplaced_start": "a <s> token that is not the first token",
    "tokens_after_end": "tokens after </s>",
    "unknown_token": "a token not in the folk-rnn v2 vocabulary",
    "empty_body": "no notes, rests or chords",
    "duration_without_note": "a duration token with no note, rest or chord to apply to",
    "broken_without_pair": "a broken rhythm (> <) not between two notes of one bar",
    "tuplet_incomplete": "a tuplet with fewer notes than it announces before a bar line",
    "unclosed_chord": "a [ without its ]",
    "unmatched_chord_close": "a ] without its [",
    "empty_chord": "a chord with no notes",
    "bar_too_long": "a bar longer than the meter allows",
    "bar_too_short": "a bar shorter than the meter allows (and not a pickup or its completion)",
    "unmatched_ending": "a |1 without its |2, or a |2 without its |1",
    "ending_without_repeat": "a first ending not closed by :|",
    "unclosed_repeat": "a |: never closed by :|",
    "unmatched_repeat_end": "a :| with nothing to repeat",
    "internal_error": "the validator failed on this input (a bug: please report it)",
}
REASON_CODES: tuple[str, ...] = tuple(REASON_DESCRIPTIONS)
# Codes about the repeat structure: standard_form needs none of them.
STRUCTURE_CODES = frozenset(
    {"unmatched_ending", "ending_without_repeat", "unclosed_repeat", "unmatched_repeat_end"}
)

# The findings columns the Beam transform adds to each row by default.
BEAM_COLUMNS: tuple[str, ...] = (
    "valid", "reasons", "bar_count", "bar_lengths_failed", "sections", "form",
    "standard_form", "ends_on_tonic", "pickup",
)

TICKS_PER_UNIT = 241_920  # 8 * 3 * 4 * 2520: see the module docstring
U = TICKS_PER_UNIT

# --- Token tables, built once from the vocabulary -------------------------------------------
# Small ints for the token classes: the scanner dispatches on them in its hot loop.
_PITCH, _DUR, _BAR, _REST, _OPEN, _CLOSE, _TUPLET, _BROKEN, _META, _START, _END, _EOT = range(12)
_EOT_SENTINEL = object()  # appended to the body so the end of the tune is just another token

_CLASS: dict[Any, int] = {t: _PITCH for t in PITCH_TOKENS}
_CLASS.update({t: _DUR for t in DURATIONS})
_CLASS.update({t: _BAR for t in BAR_TOKENS})
_CLASS.update({t: _TUPLET for t in TUPLET_TOKENS})
_CLASS.update({t: _BROKEN for t in BROKEN_TOKENS})
_CLASS.update({t: _META for t in METER_TOKENS | MODE_TOKENS})
_CLASS.update({REST: _REST, CHORD_OPEN: _OPEN, CHORD_CLOSE: _CLOSE, START: _START, END: _END})
_CLASS[_EOT_SENTINEL] = _EOT

# Duration token -> (numerator, denominator) of its multiplier.
_DUR_RATIO: dict[str, tuple[int, int]] = {t: (f.numerator, f.denominator) for t, f in DURATIONS.items()}

# The length rules, shared with model/analysis/timing.py.
# Broken token -> (fused duration of the first note or None, first note's factor, second's).
BROKEN_RULES: dict[str, tuple[tuple[int, int] | None, tuple[int, int], tuple[int, int]]] = {
    ">": (None, (3, 2), (1, 2)),
    "<": (None, (1, 2), (3, 2)),
    "2>": (None, (7, 4), (1, 4)),
    "2<": (None, (1, 4), (7, 4)),
    "/2>": ((1, 2), (3, 2), (1, 2)),
    "/2<": ((1, 2), (1, 2), (3, 2)),
    "4>": ((4, 1), (3, 2), (1, 2)),
}
assert set(BROKEN_RULES) == BROKEN_TOKENS, "broken-rhythm table out of step with schemas.vocab"

COMPOUND_METERS = frozenset({"6/8", "9/8", "12/8"})
_TUPLET_P: dict[str, int] = {t: int(t[1:]) for t in TUPLET_TOKENS}


def tuplet_q(p: int, compound: bool) -> int:
    """Notes of a (p tuplet take the time of q (ABC 2.1, 4.13)."""
    if p in (2, 4, 8):
        return 3
    if p in (3, 6):
        return 2
    return 3 if compound else 2


# (p, compound) -> ticks of one unit-length note inside the tuplet; exact since 2520 | U.
_TUPLET_BASE: dict[tuple[int, bool], int] = {
    (p, c): U * tuplet_q(p, c) // p for p in range(2, 10) for c in (False, True)
}

# Meter (without "M:") -> ticks of a full bar.
_BAR_TICKS: dict[str, int] = {
    m: U * 8 * int(m.split("/")[0]) // int(m.split("/")[1]) for m in METERS
}

_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def _pitch_info(token: str) -> tuple[int, bool]:
    """(height in semitones, is a tonic C) of a pitch token such as ``^f``, ``=B,``, ``c'``."""
    accidental = token[0] if token[0] in "^_=" else ""
    letter = token[len(accidental)]
    octave = (1 if letter.islower() else 0) + token.count("'") - token.count(",")
    height = 12 * octave + _SEMITONE[letter.upper()] + {"^": 1, "_": -1}.get(accidental, 0)
    return height, letter in "Cc" and accidental in ("", "=")


_PITCH_HEIGHT: dict[str, int] = {t: _pitch_info(t)[0] for t in PITCH_TOKENS}
_TONIC: frozenset[str] = frozenset(t for t in PITCH_TOKENS if _pitch_info(t)[1])


def pitch_height(token: str) -> int | None:
    """Semitones above ``C`` of a pitch token (``c`` is 12, ``^F,`` is -6), None for other tokens."""
    return _PITCH_HEIGHT.get(token)


# --- Results -----------------------------------------------------------------------------------
@dataclass
class Findings:
    """What the validator found about one tune. Flat, plain values: ``as_row()`` feeds Arrow.

    Lengths (``bar_lengths_failed``, ``pickup``) are floats in units of L:1/8; problem
    messages give them exactly. ``sections`` is a list of dicts with keys label, bars,
    repeats, has_endings, ends_on_tonic and start_bar (the written bar where it starts).
    """

    valid: bool
    reasons: list[str] = field(default_factory=list)  # distinct codes, in order of first problem
    problems: list[dict] = field(default_factory=list)  # {code, bar, token, message}
    meter: str | None = None  # e.g. "6/8"
    mode: str | None = None  # maj, min, dor, mix
    bar_count: int = 0  # as played once: repeats and endings counted once, pickup not counted
    bar_lengths_failed: list[float] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)
    form: str = ""  # e.g. "AABB": a repeated section's letter appears twice
    standard_form: bool = False  # exactly two repeated 8-bar sections (AABB, 8 + 8)
    ends_on_tonic: bool = False  # the last sounding note of the tune is a C
    pickup: float = 0.0  # length of the pickup bar, 0 when none
    length: int = 0  # number of tokens given

    def as_row(self) -> dict:
        """A dict of plain Python values (lists, dicts, str, int, float, bool, None)."""
        return asdict(self)


def _problem(code: str, bar: int, token: int, message: str) -> tuple[str, int, int, str]:
    return (code, bar, token, message)


def _fmt(ticks: int | Fraction) -> str:
    """Ticks as an exact length in units of L:1/8, e.g. ``7/2``."""
    return str(Fraction(ticks) / U)


# --- The scanner: one pass over the body ---------------------------------------------------------
@dataclass
class _Scan:
    """The body cut at bar lines: segment i is followed by bar-line group i (if any)."""

    ticks: list = field(default_factory=list)  # length of each segment (int, rarely Fraction)
    start: list[int] = field(default_factory=list)  # token index where each segment starts
    elements: list[int] = field(default_factory=list)  # notes, rests and chords in each segment
    last_pitch: list = field(default_factory=list)  # last sounding pitch token, or None
    groups: list[tuple[int, list[str]]] = field(default_factory=list)  # (first token, bar tokens)


def _scale(length: int | Fraction, ratio: tuple[int, int]) -> int | Fraction:
    value = length * ratio[0]
    return value // ratio[1] if value % ratio[1] == 0 else Fraction(value, ratio[1])


def _scan(tokens: list, start: int, stop: int, compound: bool, problems: list) -> _Scan:
    """Lengths of the bars, the bar lines and the last notes, reporting rhythm problems.

    One long loop on purpose: it runs for every token of every tune, and local variables
    and an if-chain on small ints are several times faster than helper calls per token.
    """
    out = _Scan()
    cls = _CLASS.get
    ticks = elems = 0
    last_pitch = None
    seg_start = start
    bars_done = 0  # non-empty segments so far: the written bar index of the current one
    last_bar_token = -2
    length = 0  # length of the last element, so a duration or broken rhythm can rescale it
    attach = 0  # 0: nothing to attach to; 1: element without duration; 2: with a duration
    pending = -1  # token index of a broken rhythm waiting for its second note
    pending_ratio = (1, 1)
    tuplet_left = 0
    tuplet_token = -1
    tuplet_base = U
    in_chord = False
    chord_token = chord_base = 0
    chord_low = None
    chord_low_height = 0
    chord_ratio = (1, 1)
    chord_attach = 0  # 1 right after the chord's first note: its duration counts
    body = tokens[start:stop]
    body.append(_EOT_SENTINEL)
    for i, t in enumerate(body, start):
        try:
            k = cls(t)
        except TypeError:  # unhashable junk
            k = None
        if in_chord:
            if k == _PITCH:
                height = _PITCH_HEIGHT[t]
                if chord_low is None:  # the first note: a duration right after it counts
                    chord_attach = 1
                    chord_low, chord_low_height = t, height
                else:
                    chord_attach = 0
                    if height < chord_low_height:
                        chord_low, chord_low_height = t, height
                continue
            if k == _DUR:
                if chord_attach == 1:
                    chord_ratio = _DUR_RATIO[t]
                    chord_attach = 0
                elif chord_low is None:
                    problems.append(_problem("duration_without_note", bars_done, i,
                                             f"duration {t} inside a chord before any note"))
                continue
            # Anything else ends the chord: an honest ] or, reported, whatever came instead.
            in_chord = False
            if k != _CLOSE:
                problems.append(_problem("unclosed_chord", bars_done, chord_token,
                                         f"chord opened at token {chord_token} is not closed"))
            if chord_low is None:
                problems.append(_problem("empty_chord", bars_done, chord_token, "chord with no notes"))
                attach = 0
            else:
                length = _scale(chord_base, chord_ratio)
                ticks += length
                elems += 1
                last_pitch = chord_low
                attach = 1
            if k == _CLOSE:
                continue
        if k == _PITCH or k == _REST or k == _OPEN:
            # A new element: its base length carries any tuplet and the second half of a
            # broken rhythm; its own duration token, if one follows, rescales it.
            if tuplet_left:
                base = tuplet_base
                tuplet_left -= 1
            else:
                base = U
            if pending >= 0:
                base = base * pending_ratio[0] // pending_ratio[1]
                pending = -1
            if k == _OPEN:
                in_chord = True
                chord_token, chord_base = i, base
                chord_low, chord_ratio, chord_attach = None, (1, 1), 0
                attach = 0
                continue
            length = base
            ticks += base
            elems += 1
            attach = 1
            if k == _PITCH:
                last_pitch = t
        elif k == _DUR:
            if attach == 1:
                new = _scale(length, _DUR_RATIO[t])
                ticks += new - length
                length = new
                attach = 2
            else:
                what = "a second duration for one note" if attach == 2 else "no note before it"
                problems.append(_problem("duration_without_note", bars_done, i, f"duration {t}: {what}"))
        elif k == _BAR or k == _EOT:
            if k == _BAR and i == last_bar_token + 1:  # consecutive bar tokens: one bar line
                out.groups[-1][1].append(t)
                last_bar_token = i
                continue
            if pending >= 0:
                problems.append(_problem("broken_without_pair", bars_done, pending,
                                         f"broken rhythm {tokens[pending]} has no second note in its bar"))
                pending = -1
            if tuplet_left:
                problems.append(_problem("tuplet_incomplete", bars_done, tuplet_token,
                                         f"tuplet {tokens[tuplet_token]} lacks {tuplet_left} note(s)"))
                tuplet_left = 0
            attach = 0
            out.ticks.append(ticks)
            out.start.append(seg_start)
            out.elements.append(elems)
            out.last_pitch.append(last_pitch)
            if elems:
                bars_done += 1
            ticks = elems = 0
            last_pitch = None
            seg_start = i + 1
            if k == _BAR:
                out.groups.append((i, [t]))
                last_bar_token = i
        elif k == _BROKEN:
            fused, first, second = BROKEN_RULES[t]
            if attach == 0:
                problems.append(_problem("broken_without_pair", bars_done, i,
                                         f"broken rhythm {t} has no note before it"))
                continue
            if fused is not None:
                if attach == 1:
                    new = _scale(length, fused)
                    ticks += new - length
                    length = new
                else:
                    problems.append(_problem("duration_without_note", bars_done, i,
                                             f"{t} gives a second duration to a note"))
            new = _scale(length, first)
            ticks += new - length
            length = new
            attach = 0
            pending, pending_ratio = i, second
        elif k == _TUPLET:
            if tuplet_left:
                problems.append(_problem("tuplet_incomplete", bars_done, tuplet_token,
                                         f"tuplet {tokens[tuplet_token]} lacks {tuplet_left} note(s)"))
            if pending >= 0:
                problems.append(_problem("broken_without_pair", bars_done, pending,
                                         f"broken rhythm {tokens[pending]} is followed by a tuplet"))
                pending = -1
            p = _TUPLET_P[t]
            tuplet_left, tuplet_token, tuplet_base = p, i, _TUPLET_BASE[p, compound]
            attach = 0
        elif k == _CLOSE:
            problems.append(_problem("unmatched_chord_close", bars_done, i, "] without ["))
            attach = 0
        elif k == _META:
            problems.append(_problem("header_in_body", bars_done, i, f"{t} inside the body"))
        elif k == _START:
            problems.append(_problem("misplaced_start", bars_done, i, "<s> inside the tune"))
        else:  # _END cannot occur: the body stops before the first </s>
            problems.append(_problem("unknown_token", bars_done, i, f"unknown token {t!r}"[:200]))
    return out


# --- Header --------------------------------------------------------------------------------------
def _parse_header(tokens: list, problems: list) -> tuple[str | None, str | None, int]:
    """(meter, mode, index of the first body token); the header is the run of M:/K: tokens."""
    i = 1 if tokens and isinstance(tokens[0], str) and tokens[0] == START else 0
    first = i
    meters: list[int] = []
    modes: list[int] = []
    while i < len(tokens) and _is_header_token(tokens[i]):
        (meters if tokens[i] in METER_TOKENS else modes).append(i)
        i += 1
    if not meters:
        problems.append(_problem("missing_meter", -1, first, "the tune does not start with an M: token"))
    if not modes:
        problems.append(_problem("missing_key", -1, first, "no K: token after the meter"))
    if len(meters) > 1:
        problems.append(_problem("duplicate_meter", -1, meters[1], f"second meter {tokens[meters[1]]}"))
    if len(modes) > 1:
        problems.append(_problem("duplicate_key", -1, modes[1], f"second key {tokens[modes[1]]}"))
    if meters and modes and modes[0] < meters[0]:
        problems.append(_problem("header_order", -1, modes[0], "K: comes before M:"))
    meter = tokens[meters[0]][2:] if meters else None
    mode = tokens[modes[0]][3:] if modes else None
    return meter, mode, i


def meter_and_mode(tokens: Sequence[str]) -> tuple[str | None, str | None]:
    """A tune's meter and mode: its first M: and K: tokens in the header run (``<s>`` allowed first).

    The one definition used everywhere (validator findings, generated rows, compare, stats): an M:
    or K: token after the first body token is not the tune's meter or mode but a body error.
    """
    meter, mode, _ = _parse_header(list(tokens), [])
    return meter, mode


def _is_header_token(token: Any) -> bool:
    return isinstance(token, str) and (token in METER_TOKENS or token in MODE_TOKENS)


# --- Sections and repeats ------------------------------------------------------------------------
_BODY, _E1, _E1_DONE, _E2 = range(4)  # where a section is: body, first ending, after its :|, second


@dataclass
class _Section:
    start: int  # first segment
    end: int = -1  # last segment, second ending included
    repeats: bool = False
    opened_at: int = -1  # token index of the |: that opened it, or -1
    phase: int = _BODY
    e1_token: int = -1  # token index of its |1
    e1: tuple[int, int] | None = None  # first ending's segments (first, last)
    e2: tuple[int, int] | None = None
    e2_start: int = -1

    @property
    def played_end(self) -> int:
        """Last segment of the section played once: through its first ending only."""
        return self.e1[1] if self.e1 else self.end


class _Structure:
    """Cuts the tune into sections at its repeat signs (and lost double bars), reporting
    structure problems.

    Bar-line group b follows segment b, so a section boundary at group b means the section
    ends with segment b and the next one starts with segment b + 1. Pickups (the tune's, the
    second halves of split bars, short bars after a repeat sign) are not bars when counting a
    section's or ending's bars.
    """

    def __init__(self, scan: _Scan, pickups: set[int], breaks: set[int], problems: list):
        self.scan = scan
        self.breaks = breaks  # plain bar-line groups that stand for a lost double bar
        self.problems = problems
        # nonempty[j]: segments with notes among the first j, i.e. the written bar index of j;
        # counted[j]: the same without pickups.
        self.nonempty = [0]
        self.counted = [0]
        for j, n in enumerate(scan.elements):
            self.nonempty.append(self.nonempty[-1] + (n > 0))
            self.counted.append(self.counted[-1] + (n > 0 and j not in pickups))
        self.sections: list[_Section] = []
        self.cur = _Section(start=0)

    def run(self) -> list[_Section]:
        for b, (first_token, bar_tokens) in enumerate(self.scan.groups):
            cur = self.cur
            if cur.phase == _E2 and self.count(cur.e2_start, b) >= self.count(*cur.e1):
                self.close(b)  # the second ending is as long as the first: it is over
            if b in self.breaks:
                self.double_bar(b)
                continue
            for offset, t in enumerate(bar_tokens):
                getattr(self, _BAR_ACTION[t])(b, first_token + offset)
        self.finish(len(self.scan.ticks) - 1)
        return self.sections

    def count(self, first: int, last: int) -> int:
        """Segments with notes in [first, last], pickups left out."""
        if last < first:
            return 0
        return self.counted[last + 1] - self.counted[first]

    def report(self, code: str, segment: int, token: int, message: str) -> None:
        self.problems.append(_problem(code, self.nonempty[segment], token, message))

    def close(self, b: int) -> None:
        """End the current section with segment b."""
        cur = self.cur
        if cur.phase == _E1:
            cur.e1 = (cur.e1[0], b)
        elif cur.phase == _E2:
            cur.e2 = (cur.e2_start, b)
        cur.end = b
        self.sections.append(cur)
        self.cur = _Section(start=b + 1)

    def bar(self, b: int, i: int) -> None:
        pass

    def double_bar(self, b: int) -> None:
        """A section boundary the tokens lost (``||`` became ``|``): like a written one, it
        ends a second ending or a section that no open ``|:`` holds together."""
        cur = self.cur
        if cur.phase == _E2 or (cur.phase == _BODY and cur.opened_at < 0 and self.count(cur.start, b)):
            self.close(b)

    def end_repeat(self, b: int, i: int) -> None:
        cur = self.cur
        if cur.phase == _BODY:
            if self.count(cur.start, b):
                cur.repeats = True
                self.close(b)
            else:
                self.report("unmatched_repeat_end", b + 1, i, ":| with nothing to repeat")
        elif cur.phase == _E1:
            cur.e1 = (cur.e1[0], b)
            cur.phase = _E1_DONE
            cur.repeats = True
        elif cur.phase == _E1_DONE:
            self.report("unmatched_repeat_end", b + 1, i, "a second :| after a first ending")
        else:
            self.report("unmatched_repeat_end", b + 1, i, ":| inside a second ending")
            self.close(b)

    def first_ending(self, b: int, i: int) -> None:
        if self.cur.phase == _E2:  # a new section with endings, not opened by |:
            self.close(b)
        cur = self.cur
        if cur.phase == _BODY:
            cur.phase, cur.e1_token, cur.e1 = _E1, i, (b + 1, b)
        else:
            self.report("unmatched_ending", b + 1, i, "|1 inside a first ending")

    def second_ending(self, b: int, i: int) -> None:
        cur = self.cur
        if cur.phase == _E1:
            self.report("ending_without_repeat", b + 1, i, "first ending not closed by :| before |2")
            cur.e1 = (cur.e1[0], b)
        elif cur.phase != _E1_DONE:
            self.report("unmatched_ending", b + 1, i, "|2 without a |1 before it")
            return
        cur.phase, cur.e2_start = _E2, b + 1

    def start_repeat(self, b: int, i: int) -> None:
        cur = self.cur
        if cur.phase in (_E1, _E1_DONE):
            self.report("unmatched_ending", b + 1, cur.e1_token, "|1 without a |2 before the next |:")
            self.close(b)
        elif cur.phase == _E2 or self.count(cur.start, b):
            if cur.phase == _BODY and cur.opened_at >= 0:
                self.report("unclosed_repeat", cur.start, cur.opened_at, "|: never closed by :|")
            self.close(b)
        # else: nothing but a pickup so far, which belongs to the section this |: opens
        self.cur.opened_at = i

    def finish(self, b: int) -> None:
        cur = self.cur
        if cur.phase == _BODY and not self.count(cur.start, b):
            if cur.opened_at >= 0:
                self.report("unclosed_repeat", b + 1, cur.opened_at, "|: with no music after it")
            return
        if cur.phase in (_E1, _E1_DONE):
            self.report("unmatched_ending", cur.start, cur.e1_token, "|1 without a |2")
        elif cur.phase == _BODY and cur.opened_at >= 0:
            self.report("unclosed_repeat", cur.start, cur.opened_at, "|: never closed by :|")
        self.close(b)


_BAR_ACTION = {"|": "bar", ":|": "end_repeat", "|1": "first_ending", "|2": "second_ending",
               "|:": "start_repeat"}
assert set(_BAR_ACTION) == BAR_TOKENS, "bar-line table out of step with schemas.vocab"


# --- Bar lengths ---------------------------------------------------------------------------------
def _splits(groups: list, a: int, c: int) -> bool:
    """Whether the bar lines between segments a and c cut a bar in two at a repeat sign."""
    signs = {t for g in range(a, c) for t in groups[g][1]}
    return bool(signs & {":|", "|:"}) and not signs & {"|1", "|2"}


def _lead_ins(scan: _Scan, with_notes: list[int], full: int) -> set[int]:
    """Short bars right after a repeat sign (not an ending), the last bar excepted: a section's
    pickup, which needs no completion any more than the tune's does (``g4 :| |: B4 | e2ef``)."""
    return {f for f in with_notes[1:-1] if scan.ticks[f] < full and _splits(scan.groups, f - 1, f)}


def _last_with_notes(scan: _Scan, first: int, last: int) -> int:
    for j in range(last, first - 1, -1):
        if scan.elements[j]:
            return j
    return -1


def _split_at_plain_bars(scan: _Scan, with_notes: list[int], full: int) -> dict[int, int]:
    """{a: c} for short bars a, c either side of a plain bar line that add up to one full bar,
    with a full bar before a and after c.

    That is a bar split by a section boundary whose double bar the tokens cannot show (the
    ingest writes ``||`` as ``|``, e.g. ``... d2 z || A | ...``): the second half is the next
    section's pickup. The full neighbours keep it from excusing a tune barred in half bars,
    a misplaced bar line after the pickup, or a short last bar.
    """
    ticks = scan.ticks
    out = {}
    for before, a, c, after in zip(with_notes, with_notes[1:], with_notes[2:], with_notes[3:]):
        if (ticks[before] == full and ticks[after] == full and c == a + 1
                and ticks[a] < full and ticks[c] < full and ticks[a] + ticks[c] == full
                and scan.groups[a][1] == ["|"]):
            out[a] = c
    return out


def _classify_bars(
    scan: _Scan, sections: list[_Section], full: int, pickup: int, split: dict[int, int], lead_ins: set[int]
) -> tuple[set[int], set[int]]:
    """(segments too short, segments that are pickups) by the rules of the module docstring.

    A short bar is fine when it is the tune's first (the pickup); when it and its neighbour
    across a repeat sign, or across a lost double bar (``split``), make one full bar (the
    second half is then a pickup); when it starts a section right after a repeat sign; when it
    ends a section (or an ending) and completes the tune's pickup or a section's first bar;
    or when it starts a section and such an end completes it.
    """
    ticks = scan.ticks
    with_notes = [j for j, n in enumerate(scan.elements) if n]
    short = {j for j in with_notes if ticks[j] < full}
    pickups = set()
    if pickup >= 0:
        short.discard(pickup)
        pickups.add(pickup)
    for a, c in split.items():
        short -= {a, c}
        pickups.add(c)
    for a, c in zip(with_notes, with_notes[1:]):
        if a in short and c in short and ticks[a] + ticks[c] == full and _splits(scan.groups, a, c):
            short -= {a, c}
            pickups.add(c)
    firsts = [next((j for j in with_notes if s.start <= j <= s.end), -1) for s in sections]
    ends = [_section_ends(scan, s) for s in sections]
    for si, f in enumerate(firsts):
        candidates = ends[si] + (ends[si - 1] if si else [])
        if f in short and (f in lead_ins or any(e != f and ticks[e] + ticks[f] == full for e in candidates)):
            short.discard(f)
            pickups.add(f)
    for si, section_ends in enumerate(ends):
        starts = [pickup, firsts[si], firsts[si + 1] if si + 1 < len(firsts) else -1]
        lengths = {ticks[f] for f in starts if f >= 0 and ticks[f] < full}
        for e in section_ends:
            if e in short and any(ticks[e] + p == full for p in lengths if e not in starts):
                short.discard(e)
    return short, pickups


def _section_ends(scan: _Scan, section: _Section) -> list[int]:
    """The last bars of a section as played: the end of its first and of its second ending."""
    ends = [_last_with_notes(scan, section.start, section.played_end)]
    if section.e2:
        ends.append(_last_with_notes(scan, *section.e2))
    return [e for e in ends if e >= 0]


# --- Putting it together -------------------------------------------------------------------------
def bar_lengths(tokens: Sequence[str]) -> list[Fraction]:
    """The length of every written bar (those with notes), exactly, in units of L:1/8.

    The measure the bar rules use, for cross-checks against other implementations.
    """
    tokens = tokens.split() if isinstance(tokens, str) else list(tokens)
    problems: list = []
    meter, _, start = _parse_header(tokens, problems)
    scan = _scan(tokens, start, _index_of_end(tokens, start), meter in COMPOUND_METERS, problems)
    return [Fraction(t) / U for t, n in zip(scan.ticks, scan.elements) if n]


def validate_tokens(tokens: Sequence[str], truncated: bool = False) -> Findings:
    """Check one tune's tokens (``M:.. K:.. body``, with or without ``<s>``/``</s>``).

    Never raises. A plain string is split on whitespace; None counts as no tokens.
    """
    if tokens is None:
        tokens = []
    elif isinstance(tokens, str):
        tokens = tokens.split()
    elif not isinstance(tokens, list):
        try:
            tokens = list(tokens)
        except TypeError:
            tokens = [tokens]
    try:
        return _validate(tokens, bool(truncated))
    except Exception as err:  # a bug must not stop a pipeline of a million tunes; tests forbid it
        problem = {"code": "internal_error", "bar": -1, "token": -1, "message": repr(err)[:200]}
        return Findings(valid=False, reasons=["internal_error"], problems=[problem], length=len(tokens))


def _validate(tokens: list, truncated: bool) -> Findings:
    problems: list[tuple[str, int, int, str]] = []
    if truncated:
        problems.append(_problem("truncated", -1, len(tokens), "the tune was cut off"))
    meter, mode, body_start = _parse_header(tokens, problems)
    stop = _index_of_end(tokens, body_start)
    if stop + 1 < len(tokens):
        problems.append(_problem("tokens_after_end", -1, stop + 1, f"{len(tokens) - stop - 1} token(s) after </s>"))
    scan = _scan(tokens, body_start, stop, meter in COMPOUND_METERS, problems)
    findings = Findings(valid=False, meter=meter, mode=mode, length=len(tokens))
    if not any(scan.elements):
        problems.append(_problem("empty_body", -1, body_start, "no notes, rests or chords"))
    else:
        _shape(scan, _BAR_TICKS.get(meter), problems, findings)
    problems.sort(key=lambda p: p[2])
    findings.problems = [{"code": c, "bar": b, "token": t, "message": m} for c, b, t, m in problems]
    findings.reasons = list(dict.fromkeys(p[0] for p in problems))
    findings.valid = not problems
    return findings


def _index_of_end(tokens: list, start: int) -> int:
    for i in range(start, len(tokens)):
        if tokens[i] is END or (isinstance(tokens[i], str) and tokens[i] == END):
            return i
    return len(tokens)


def _shape(scan: _Scan, full: int | None, problems: list, findings: Findings) -> None:
    """Sections, bar counts, bar lengths, pickup, form and cadences into ``findings``."""
    with_notes = [j for j, n in enumerate(scan.elements) if n]
    # A short first bar is a pickup, unless it is all there is.
    pickup = with_notes[0] if full and len(with_notes) > 1 and scan.ticks[with_notes[0]] < full else -1
    split = _split_at_plain_bars(scan, with_notes, full) if full else {}
    lead_ins = _lead_ins(scan, with_notes, full) if full else set()
    # Pickups are no bars: so ":| e 2 |: f 8" does not make "e 2" a section of its own.
    pickups: set[int] = {pickup, *split.values(), *lead_ins} - {-1}
    structure = _Structure(scan, pickups, set(split), problems)
    sections = structure.run()
    short: set[int] = set()
    if full:
        short, pickups = _classify_bars(scan, sections, full, pickup, split, lead_ins)
        for j in with_notes:
            if scan.ticks[j] > full or j in short:
                code = "bar_too_long" if scan.ticks[j] > full else "bar_too_short"
                problems.append(_problem(code, structure.nonempty[j], scan.start[j],
                                         f"bar lasts {_fmt(scan.ticks[j])} eighths, the meter wants {_fmt(full)}"))
                findings.bar_lengths_failed.append(float(Fraction(scan.ticks[j]) / U))
    labels = [_label(n) for n in range(len(sections))]
    for label, s in zip(labels, sections):
        bars = sum(1 for j in range(s.start, s.played_end + 1) if scan.elements[j] and j not in pickups)
        findings.sections.append({
            "label": label, "bars": bars, "repeats": s.repeats, "has_endings": s.e1 is not None,
            "ends_on_tonic": _ends_on_tonic(scan, s.start, s.end), "start_bar": structure.nonempty[s.start],
        })
    findings.bar_count = sum(s["bars"] for s in findings.sections)
    findings.form = "".join(s["label"] * (2 if s["repeats"] else 1) for s in findings.sections)
    findings.standard_form = (
        findings.form == "AABB"
        and all(s["bars"] == 8 for s in findings.sections)
        and not any(p[0] in STRUCTURE_CODES for p in problems)
    )
    findings.ends_on_tonic = _ends_on_tonic(scan, 0, len(scan.ticks) - 1)
    findings.pickup = float(Fraction(scan.ticks[pickup]) / U) if pickup >= 0 else 0.0


def _label(n: int) -> str:
    """A, B, ... Z, then S27, S28 ... (model output can have many sections)."""
    return chr(ord("A") + n) if n < 26 else f"S{n + 1}"


def _ends_on_tonic(scan: _Scan, first: int, last: int) -> bool:
    for j in range(last, first - 1, -1):
        if scan.last_pitch[j] is not None:
            return scan.last_pitch[j] in _TONIC
    return False


# --- Summaries -----------------------------------------------------------------------------------
class SummaryTally:
    """The counts behind ``summarize``, added tune by tune; tallies of shards or workers merge."""

    def __init__(self) -> None:
        self.total = self.valid = self.standard = self.tonic = 0
        self.by_meter: dict[str, list[int]] = {}  # name -> [tunes, valid]
        self.by_mode: dict[str, list[int]] = {}
        self.reasons: Counter[str] = Counter()
        self.forms: Counter[str] = Counter()

    def add(self, f: Findings | dict) -> None:
        get = f.get if isinstance(f, dict) else lambda k, _f=f: getattr(_f, k, None)
        ok = bool(get("valid"))
        self.total += 1
        self.valid += ok
        self.standard += bool(get("standard_form"))
        self.tonic += bool(get("ends_on_tonic"))
        for table, key in ((self.by_meter, get("meter")), (self.by_mode, get("mode"))):
            counts = table.setdefault(str(key) if key is not None else "?", [0, 0])
            counts[0] += 1
            counts[1] += ok
        self.reasons.update(get("reasons") or [])
        self.forms[get("form") or ""] += 1

    def merge(self, other: SummaryTally) -> SummaryTally:
        self.total += other.total
        self.valid += other.valid
        self.standard += other.standard
        self.tonic += other.tonic
        for mine, theirs in ((self.by_meter, other.by_meter), (self.by_mode, other.by_mode)):
            for key, (n, v) in theirs.items():
                counts = mine.setdefault(key, [0, 0])
                counts[0] += n
                counts[1] += v
        self.reasons.update(other.reasons)
        self.forms.update(other.forms)
        return self

    def summary(self) -> dict:
        def fraction(n: int, d: int) -> float:
            return n / d if d else 0.0

        def breakdown(table: dict[str, list[int]]) -> dict:
            return {k: {"tunes": n, "valid": v, "valid_fraction": fraction(v, n)} for k, (n, v) in sorted(table.items())}

        return {
            "tunes": self.total,
            "valid": self.valid,
            "valid_fraction": fraction(self.valid, self.total),
            "by_meter": breakdown(self.by_meter),
            "by_mode": breakdown(self.by_mode),
            "reasons": dict(self.reasons.most_common()),  # code -> number of tunes with it
            "forms": dict(self.forms.most_common(10)),
            "standard_form_fraction": fraction(self.standard, self.total),
            "ends_on_tonic_fraction": fraction(self.tonic, self.total),
        }


def summarize(findings: Iterable[Findings | dict]) -> dict:
    """Counts over many tunes: valid fraction overall, by meter and by mode, reasons, forms.

    Takes ``Findings`` or rows (dicts with at least valid, reasons, meter, mode, form,
    standard_form and ends_on_tonic, e.g. read back from Parquet).
    """
    tally = SummaryTally()
    for f in findings:
        tally.add(f)
    return tally.summary()


def format_summary(summary: dict) -> str:
    """The summary of ``summarize`` as text for a terminal."""
    lines = [
        f"tunes: {summary['tunes']}   valid: {summary['valid']} ({summary['valid_fraction']:.1%})",
        f"standard AABB 8+8: {summary['standard_form_fraction']:.1%}   "
        f"ends on the tonic: {summary['ends_on_tonic_fraction']:.1%}",
    ]
    for title, key in (("by meter", "by_meter"), ("by mode", "by_mode")):
        lines.append(f"{title}:")
        for name, row in summary[key].items():
            lines.append(f"  {name:<6} {row['valid']:>8} / {row['tunes']:<8} valid ({row['valid_fraction']:.1%})")
    if summary["reasons"]:
        lines.append("reasons (tunes):")
        for code, n in summary["reasons"].items():
            lines.append(f"  {code:<22} {n:>8}  {REASON_DESCRIPTIONS.get(code, '')}")
    if summary["forms"]:
        lines.append("most common forms:")
        for form, n in summary["forms"].items():
            lines.append(f"  {form or '(none)':<22} {n:>8}")
    return "\n".join(lines)


# --- Beam ----------------------------------------------------------------------------------------
class ValidateTunes(beam.PTransform):
    """Validate each tune of a PCollection of rows.

    In: dict rows with ``tokens`` (a list of token strings, ``M:.. K:.. body``, with or without
    ``<s>``/``</s>``) and an optional ``truncated`` bool (True for generated tunes that hit
    their length limit). Other keys pass through untouched.

    Out: the same rows (copies) with the findings columns added: valid, reasons, bar_count,
    bar_lengths_failed, sections, form, standard_form, ends_on_tonic, pickup (``columns``
    chooses others among the ``Findings`` fields, e.g. add ``problems``).

    Metrics (namespace ``validate``): counters ``valid`` and ``invalid``, and one counter per
    reason code counting the tunes with that reason.
    """

    def __init__(self, columns: Sequence[str] = BEAM_COLUMNS, label: str | None = None):
        super().__init__(label)
        unknown = set(columns) - set(Findings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"not Findings fields: {sorted(unknown)}")
        self.columns = tuple(columns)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "ValidateTokens" >> beam.ParDo(_ValidateFn(self.columns))


class _ValidateFn(beam.DoFn):
    def __init__(self, columns: tuple[str, ...]):
        self.columns = columns
        self.counters: dict[str, Any] = {}

    def counter(self, name: str) -> Any:
        if name not in self.counters:
            self.counters[name] = Metrics.counter("validate", name)
        return self.counters[name]

    def process(self, row: dict):
        findings = validate_tokens(row.get("tokens"), bool(row.get("truncated")))
        self.counter("valid" if findings.valid else "invalid").inc()
        for code in findings.reasons:
            self.counter(code).inc()
        values = findings.as_row()
        out = dict(row)
        for column in self.columns:
            out[column] = values[column]
        yield out
