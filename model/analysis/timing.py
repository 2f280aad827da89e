"""Where each token falls in musical time, in eighths (L:1/8): its element's onset and its
position in the bar.

The lengths are the validator's: ``timeline`` runs its scanner (transforms/validator/scan.py,
which applies the rules of ``schemas.music``) and reads each note's, rest's and chord's onset from
it. Tests check the bar lengths here against ``validate.bar_lengths``.

Per token:

* ``onset``: time from the start of the body to the start of the element the token belongs to
  (a pitch and its duration token share an onset; header tokens have onset 0).
* ``position``: onset minus the start of the current bar. A bar-line token's position is the
  length of the bar it ends, so in 4/4 a well-placed ``|`` sits at position 8.
* ``boundary``: the token starts an element, a tuplet or a bar line, i.e. the elements before it
  are complete. Only there is "how far into the bar are we?" exact, so only there does the
  counting part ask how likely the model thinks a bar line is.

The header is the validator's (``meter_and_mode``): ``<s>`` first, then the run of M:/K: tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from folkrnn.schemas.music import COMPOUND_METERS, TOKEN_KIND, bar_eighths, eighths
from folkrnn.transforms.validator.scan import index_of_end, parse_header, scan_body

ZERO = Fraction(0)


def bar_length(meter: str | None) -> Fraction | None:
    """A full bar in eighths: ``4/4`` -> 8, ``6/8`` -> 6; None for no meter."""
    return bar_eighths(meter)


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
        return [i for i, t in enumerate(self.tokens) if TOKEN_KIND.get(t) == "bar"]


def timeline(tokens: list[str]) -> Timeline:
    """Onsets, positions in the bar and boundaries of a tune's tokens (``<s>``/header optional)."""
    tokens = list(tokens)
    n = len(tokens)
    meter, _, body = parse_header(tokens, [])
    stop = index_of_end(tokens, body)
    marks: list = []
    scan = scan_body(tokens, body, stop, meter in COMPOUND_METERS, [], marks)
    starts = {i: ticks for i, ticks in marks if ticks is not None}  # element start -> onset in its segment
    following = dict(zip(starts, list(starts)[1:]))  # element start -> the next one
    loose = {i for i, ticks in marks if ticks is None}  # broken rhythms attached to nothing
    onset, position, boundary = [ZERO] * n, [ZERO] * n, [False] * n
    segment = 0
    segment_start = bar_start = ZERO  # time where the current segment (bar) starts
    time = ZERO  # end of the elements started so far
    element = None  # onset of the last element started, None before the first
    in_chord = False
    for i in range(body, stop):
        kind = TOKEN_KIND.get(tokens[i])
        if i in starts:
            element = segment_start + eighths(starts[i])
            boundary[i] = True
            in_chord = kind == "chord_open"
            # The element ends where the next one in its segment starts, or with the segment.
            segment_end = scan.groups[segment][0] if segment < len(scan.groups) else stop
            after = following.get(i, stop)
            time = segment_start + eighths(starts[after] if after < segment_end else scan.ticks[segment])
        elif kind == "bar":
            if segment < len(scan.groups) and scan.groups[segment][0] == i:  # the bar line's first token
                time = segment_start = segment_start + eighths(scan.ticks[segment])
                segment += 1
            onset[i], position[i], boundary[i] = time, time - bar_start, True
            bar_start = time
            in_chord = False
            continue
        elif kind == "tuplet":
            onset[i], position[i], boundary[i] = time, time - bar_start, True
            in_chord = False
            continue
        elif in_chord and kind in ("pitch", "duration", "chord_close"):
            in_chord = kind != "chord_close"  # a chord's inner notes and durations, and its ]
        elif element is not None and (kind == "duration" or (kind == "broken" and i not in loose)):
            in_chord = False
        else:  # a stray ], a header token inside the body, an unknown token: no time, no boundary
            in_chord = False
            onset[i], position[i] = time, time - bar_start
            continue
        onset[i], position[i] = element, element - bar_start
    return Timeline(tokens, onset, position, boundary, meter)
