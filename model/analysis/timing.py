"""Where each token falls in musical time, in eighths (L:1/8): its element's onset and its
position in the bar.

The length rules are transforms/validate.py's (its tables, imported here): a note,
rest or chord lasts one eighth times its duration token; ``>``-style broken rhythms rescale it and
the next element; a ``(p`` tuplet puts p notes in the time of q; a chord lasts its ``]`` duration
times its first note's duration. Tests check the bar lengths here against ``validate.bar_lengths``.

Per token:

* ``onset``: time from the start of the body to the start of the element the token belongs to
  (a pitch and its duration token share an onset; header tokens have onset 0).
* ``position``: onset minus the start of the current bar. A bar-line token's position is the
  length of the bar it ends, so in 4/4 a well-placed ``|`` sits at position 8.
* ``boundary``: the token starts an element, a tuplet or a bar line, i.e. the elements before it
  are complete. Only there is "how far into the bar are we?" exact, so only there does the
  counting part ask how likely the model thinks a bar line is.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from schemas.vocab import (
    BAR_TOKENS,
    BROKEN_TOKENS,
    CHORD_CLOSE,
    CHORD_OPEN,
    DURATIONS,
    END,
    METER_TOKENS,
    MODE_TOKENS,
    PITCH_TOKENS,
    REST,
    START,
    TUPLET_TOKENS,
)
from transforms.validate import BROKEN_RULES, COMPOUND_METERS, tuplet_q

ONE = Fraction(1)
# broken token -> (fused duration of the first note or None, first note's factor, second note's)
BROKEN: dict[str, tuple[Fraction | None, Fraction, Fraction]] = {
    t: (Fraction(*fused) if fused else None, Fraction(*first), Fraction(*second))
    for t, (fused, first, second) in BROKEN_RULES.items()
}
_HEADER, _BAR, _TUPLET, _ELEMENT, _OTHER = range(5)


def bar_length(meter: str | None) -> Fraction | None:
    """A full bar in eighths: ``4/4`` -> 8, ``6/8`` -> 6; None for no meter."""
    if not meter:
        return None
    num, den = meter.split("/")
    return Fraction(8 * int(num), int(den))


@dataclass
class Timeline:
    tokens: list[str]
    onset: list[Fraction]
    position: list[Fraction]
    boundary: list[bool]
    meter: str | None

    @property
    def bar_length(self) -> Fraction | None:
        return bar_length(self.meter)

    def bar_lines(self) -> list[int]:
        """Indices of the bar-line tokens."""
        return [i for i, t in enumerate(self.tokens) if t in BAR_TOKENS]


def timeline(tokens: list[str]) -> Timeline:
    """Onsets, positions in the bar and boundaries of a tune's tokens (``<s>``/header optional)."""
    tokens = list(tokens)
    n = len(tokens)
    kind = [_OTHER] * n
    element_of = [-1] * n
    lengths: list[Fraction] = []
    meter = None
    # Pass 1: the elements and their final lengths, by validate's rules.
    body = 0
    while body < n and (tokens[body] == START or tokens[body] in METER_TOKENS or tokens[body] in MODE_TOKENS):
        kind[body] = _HEADER
        if tokens[body] in METER_TOKENS and meter is None:
            meter = tokens[body][2:]
        body += 1
    compound = meter in COMPOUND_METERS
    attach = 0  # 0: nothing to rescale; 1: an element without its duration yet; 2: with one
    pending: Fraction | None = None  # the second factor of a broken rhythm
    tuplet_left, tuplet_base = 0, ONE
    in_chord, chord_notes, chord_ratio, chord_attach = False, 0, ONE, 0
    for i in range(body, n):
        t = tokens[i]
        if t == END:
            kind[i:] = [_HEADER] * (n - i)
            break
        last = len(lengths) - 1
        if in_chord:
            if t in PITCH_TOKENS or t in DURATIONS:
                element_of[i], kind[i] = last, _ELEMENT
                if t in PITCH_TOKENS:
                    chord_attach = 1 if chord_notes == 0 else 0
                    chord_notes += 1
                elif chord_attach == 1:
                    chord_ratio, chord_attach = DURATIONS[t], 0
                continue
            in_chord = False  # anything else ends the chord (an honest ] or, in junk, another token)
            lengths[last] = lengths[last] * chord_ratio if chord_notes else Fraction(0)
            attach = 1 if chord_notes else 0
            if t == CHORD_CLOSE:
                element_of[i], kind[i] = last, _ELEMENT
                continue
        if t in PITCH_TOKENS or t == REST or t == CHORD_OPEN:
            base = tuplet_base if tuplet_left else ONE
            tuplet_left = max(tuplet_left - 1, 0)
            if pending is not None:
                base, pending = base * pending, None
            lengths.append(base)
            element_of[i], kind[i] = len(lengths) - 1, _ELEMENT
            if t == CHORD_OPEN:
                in_chord, chord_notes, chord_ratio, chord_attach, attach = True, 0, ONE, 0, 0
            else:
                attach = 1
        elif t in DURATIONS:
            if last >= 0:
                element_of[i], kind[i] = last, _ELEMENT
            if attach == 1:
                lengths[last] *= DURATIONS[t]
                attach = 2
        elif t in BAR_TOKENS:
            kind[i] = _BAR
            attach, pending, tuplet_left = 0, None, 0
        elif t in BROKEN_TOKENS:
            if attach == 0:
                continue
            element_of[i], kind[i] = last, _ELEMENT
            fused, first, second = BROKEN[t]
            if fused is not None and attach == 1:
                lengths[last] *= fused
            lengths[last] *= first
            attach, pending = 0, second
        elif t in TUPLET_TOKENS:
            p = int(t[1:])
            kind[i] = _TUPLET
            tuplet_left, tuplet_base, pending, attach = p, Fraction(tuplet_q(p, compound), p), None, 0
        else:  # a stray ] or a header token inside the body: no time, no boundary
            attach = 0 if t == CHORD_CLOSE else attach
    if in_chord and lengths:  # a chord still open at the end
        lengths[-1] = lengths[-1] * chord_ratio if chord_notes else Fraction(0)

    # Pass 2: onsets and positions from the final lengths.
    onset, position, boundary = [Fraction(0)] * n, [Fraction(0)] * n, [False] * n
    time = bar_start = Fraction(0)
    starts: dict[int, Fraction] = {}
    for i in range(n):
        k = kind[i]
        if k == _ELEMENT:
            e = element_of[i]
            if e not in starts:
                starts[e] = time
                time += lengths[e]
                boundary[i] = True
            onset[i], position[i] = starts[e], starts[e] - bar_start
        elif k in (_BAR, _TUPLET):
            onset[i], position[i], boundary[i] = time, time - bar_start, True
            if k == _BAR:
                bar_start = time
        elif k == _OTHER:
            onset[i], position[i] = time, time - bar_start
    return Timeline(tokens, onset, position, boundary, meter)
