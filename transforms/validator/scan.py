"""The validator's scanner: one pass over a tune's body that measures its bars.

The rules of time (durations, broken rhythms, tuplets per meter) are ``schemas.music``'s; the
scanner turns them into small-int dispatch tables once, at import, because it runs for every
token of every tune. Lengths are integers of ticks (``TICKS_PER_UNIT`` to the eighth); the rare
length that does not divide (stacked modifiers of junk input) silently becomes a Fraction, so
results stay exact.

Choices the rules leave open, made here:

* A chord's length is the duration written after ``]``, times the duration of its first note
  when the inner notes carry durations (the ABC 2.1 rule; either one alone is the usual case).
* For cadences a chord counts by its lowest note.
* Consecutive bar tokens (``:| |:``, ``:| |2``) form one bar line.

``model/analysis/timing.py`` reads onsets from this same scan (the ``marks`` argument).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from folkrnn.schemas.music import (
    BROKEN_RHYTHMS,
    DURATIONS,
    PITCH_HEIGHT,
    TICKS_PER_UNIT,
    TOKEN_KIND,
    TUPLET_NOTES,
    tuplet_q,
)
from folkrnn.schemas.vocab import END, METER_TOKENS, MODE_TOKENS, START
from folkrnn.transforms.validator.findings import problem as _problem

U = TICKS_PER_UNIT

# --- Dispatch tables, built once from folkrnn.schemas.music ----------------------------------------------
# Small ints for the token kinds: the scanner dispatches on them in its hot loop.
_PITCH, _DUR, _BAR, _REST, _OPEN, _CLOSE, _TUPLET, _BROKEN, _META, _START, _END, _EOT = range(12)
_EOT_SENTINEL = object()  # appended to the body so the end of the tune is just another token
_KIND_CODE = {
    "pitch": _PITCH, "duration": _DUR, "bar": _BAR, "rest": _REST, "chord_open": _OPEN,
    "chord_close": _CLOSE, "tuplet": _TUPLET, "broken": _BROKEN, "meter": _META, "mode": _META,
    "start": _START, "end": _END,
}
_CLASS: dict[Any, int] = {token: _KIND_CODE[kind] for token, kind in TOKEN_KIND.items()}
_CLASS[_EOT_SENTINEL] = _EOT


def _ratio(f: Fraction) -> tuple[int, int]:
    return f.numerator, f.denominator


# Duration token -> (numerator, denominator) of its multiplier.
_DUR_RATIO: dict[str, tuple[int, int]] = {t: _ratio(f) for t, f in DURATIONS.items()}
# Broken token -> (fused duration of the first note or None, first note's factor, second's).
_BROKEN_RATIO: dict[str, tuple[tuple[int, int] | None, tuple[int, int], tuple[int, int]]] = {
    t: (_ratio(r.fused) if r.fused is not None else None, _ratio(r.first), _ratio(r.second))
    for t, r in BROKEN_RHYTHMS.items()
}
# (p, compound) -> ticks of one unit-length note inside the tuplet; exact since 2520 | U.
_TUPLET_BASE: dict[tuple[int, bool], int] = {
    (p, c): U * tuplet_q(p, c) // p for p in range(2, 10) for c in (False, True)
}


# --- The scanner: one pass over the body ---------------------------------------------------------
@dataclass
class Scan:
    """The body cut at bar lines: segment i is followed by bar-line group i (if any)."""

    ticks: list = field(default_factory=list)  # length of each segment (int, rarely Fraction)
    start: list[int] = field(default_factory=list)  # token index where each segment starts
    elements: list[int] = field(default_factory=list)  # notes, rests and chords in each segment
    last_pitch: list = field(default_factory=list)  # last sounding pitch token, or None
    groups: list[tuple[int, list[str]]] = field(default_factory=list)  # (first token, bar tokens)


def _scale(length: int | Fraction, ratio: tuple[int, int]) -> int | Fraction:
    value = length * ratio[0]
    return value // ratio[1] if value % ratio[1] == 0 else Fraction(value, ratio[1])


def scan_body(
    tokens: list, start: int, stop: int, compound: bool, problems: list, marks: list | None = None
) -> Scan:
    """Lengths of the bars, the bar lines and the last notes of ``tokens[start:stop]``, reporting
    rhythm problems.

    ``marks``, when given, receives ``(token index, ticks)`` for every note, rest or chord as it
    starts (ticks: its onset in its segment; the elements before it have their final lengths by
    then) and ``(token index, None)`` for a broken rhythm with no element to attach to: what
    the timeline of model/analysis/timing.py needs beyond the segments.

    One long loop on purpose: it runs for every token of every tune, and local variables
    and an if-chain on small ints are several times faster than helper calls per token.
    """
    out = Scan()
    record = marks is not None
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
                height = PITCH_HEIGHT[t]
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
            if record:
                marks.append((i, ticks))
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
            fused, first, second = _BROKEN_RATIO[t]
            if attach == 0:
                problems.append(_problem("broken_without_pair", bars_done, i,
                                         f"broken rhythm {t} has no note before it"))
                if record:
                    marks.append((i, None))
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
            p = TUPLET_NOTES[t]
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


def index_of_end(tokens: list, start: int) -> int:
    """Index of the first ``</s>`` at or after ``start``, or the length of ``tokens``."""
    for i in range(start, len(tokens)):
        if tokens[i] is END or (isinstance(tokens[i], str) and tokens[i] == END):
            return i
    return len(tokens)


# --- Header --------------------------------------------------------------------------------------
def parse_header(tokens: list, problems: list) -> tuple[str | None, str | None, int]:
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
    meter, mode, _ = parse_header(list(tokens), [])
    return meter, mode


def _is_header_token(token: Any) -> bool:
    return isinstance(token, str) and (token in METER_TOKENS or token in MODE_TOKENS)

