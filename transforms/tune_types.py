"""Tune types (reel, jig, hornpipe ...) from a tune's meter and rhythm, and a session tempo for each.

``tune_type(tokens)`` names a tune the way session players and thesession.org do (the names are
thesession's: reel, jig, slip jig, hornpipe, polka, slide, waltz, strathspey, march, three-two).
The books write it as ``R:``, print it above the tune with a ``Q:`` tempo (so abc2midi plays a
reel as fast as a reel), index each volume by it, and the corpus has it as ``tune_type``.

The rule (first match wins; "beats" of a reel or hornpipe are quarter notes in 4/4):

==============  ==========================================================================
meter           type
==============  ==========================================================================
6/8             jig
9/8             slip jig
12/8            slide
3/4             waltz (a mazurka is a 3/4 tune too, but its accents are not in the notes)
3/2             three-two (the English "triple hornpipe")
4/4             strathspey when Scotch snaps (short-long pairs, ``<``) are frequent;
                march when the notes are long (mean over 1.3 eighths: a tune moving in
                quarter notes is no reel); hornpipe when dotted (long-short) pairs are
                frequent or most parts end on three beat-long "stops" (``d2 B2 G2``);
                otherwise reel (running eighths)
2/4, mostly     a reel written with halved note values (O'Neill prints reels and hornpipes
sixteenths      so): the 4/4 rule on the halved values
2/4, eighths    march when dotted pairs or sixteenths are frequent, otherwise polka
==============  ==========================================================================

Checked against the ingest's dance collections (O'Neill's, Ryan's, Aird's), whose titles often
name the type: of the titled reels 377 in 433 come out reel (40 hornpipe), of the hornpipes 270
in 331 (51 reel: O'Neill prints some in even sixteenths with no stops, which no rule on paper
can tell from a reel), of the strathspeys 52 in 89, and every titled jig in 6/8 is a jig.
"Frequent" is at least one such pair in four pairs of notes (snaps: one in ten; reels and
hornpipes have none).

Tempi (``TEMPI``) are session speeds at the relaxed end of what dancers ask for: a set-dance
table (reels and jigs 116-124, hornpipes 92-100, polkas and slides 132-140 beats a minute, two
beats a bar) and players' figures (reels 112-120, jigs 126, slip jigs 144, slides and polkas
132-138, hornpipes 92). The beat is the foot tap: a half note of a 4/4 reel, a dotted quarter
of a jig; ``classify`` writes it as an ABC ``Q:`` value (``"Reel" 1/2=112``; ``1/4=112`` for a
reel written in 2/4 sixteenths), which abcm2ps prints above the first staff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from folkrnn.schemas.music import BROKEN_RHYTHMS, DURATIONS, TOKEN_KIND
from folkrnn.schemas.vocab import METER_TOKENS


@dataclass(frozen=True)
class Tempo:
    """A type's session tempo: ``per_minute`` beats of ``beat`` eighths (as a reel or jig is
    usually written; halved for a tune written in halved note values)."""

    beat: Fraction
    per_minute: int
    plural: str  # the heading of its index section


# Type -> its tempo; the order is the order of a volume's index by type.
TEMPI: dict[str, Tempo] = {
    "reel": Tempo(Fraction(4), 112, "Reels"),  # a half note: two taps a 4/4 bar
    "jig": Tempo(Fraction(3), 116, "Jigs"),  # a dotted quarter: two taps a 6/8 bar
    "hornpipe": Tempo(Fraction(4), 92, "Hornpipes"),
    "polka": Tempo(Fraction(2), 132, "Polkas"),  # a quarter: two taps a 2/4 bar
    "slide": Tempo(Fraction(3), 132, "Slides"),  # four taps a 12/8 bar
    "slip jig": Tempo(Fraction(3), 132, "Slip jigs"),  # three taps a 9/8 bar
    "strathspey": Tempo(Fraction(2), 128, "Strathspeys"),  # four taps a bar
    "march": Tempo(Fraction(2), 100, "Marches"),
    "waltz": Tempo(Fraction(2), 120, "Waltzes"),
    "three-two": Tempo(Fraction(4), 88, "Three-twos"),  # three half notes a bar
}
TUNE_TYPES: tuple[str, ...] = tuple(TEMPI)
BY_METER = {"6/8": "jig", "9/8": "slip jig", "12/8": "slide", "3/4": "waltz", "3/2": "three-two"}

FREQUENT = 0.25  # dotted pairs per pair of notes that make a hornpipe (or a 2/4 march)
FREQUENT_SNAPS = 0.1  # Scotch snaps per pair of notes that make a strathspey
LONG_NOTES = Fraction(13, 10)  # mean note length (eighths) above which a 4/4 tune is no reel
SIXTEENTHS = Fraction(3, 4)  # mean note length (eighths) below which 2/4 is written in sixteenths
_DOTTED = frozenset(t for t, r in BROKEN_RHYTHMS.items() if r.first > r.second)
_SNAPPED = frozenset(t for t, r in BROKEN_RHYTHMS.items() if r.first < r.second)


@dataclass(frozen=True)
class Rhythm:
    """What the rule reads of a tune's notes (rests and chords count as notes)."""

    notes: int
    mean_length: Fraction  # written length in eighths, a broken pair counting as written
    dotted: float  # long-short pairs (``>`` or written 3:1) per two notes
    snapped: float  # short-long pairs (``<`` or written 1:3) per two notes
    short: float  # share of notes a sixteenth or shorter
    stops: float  # share of part endings holding three notes of twice ``unit`` in a row
    unit: Fraction  # the running note: 1 (eighths) or 1/2 (sixteenths)


def _bars(tokens: Sequence[str]) -> list[tuple[list[tuple[Fraction, str | None]], str]]:
    """The body as bars: each a list of (written length, broken token after it) and the bar
    token that ends it ("" for the end of the tune). Tuplets are read as written."""
    bars: list[tuple[list[tuple[Fraction, str | None]], str]] = []
    notes: list[tuple[Fraction, str | None]] = []
    i = 0
    while i < len(tokens):
        kind = TOKEN_KIND.get(tokens[i])
        if kind == "bar":
            bars.append((notes, tokens[i]))
            notes = []
            i += 1
            continue
        if kind not in ("pitch", "rest", "chord_open"):
            i += 1
            continue
        if kind == "chord_open":
            while i < len(tokens) and tokens[i] != "]":
                i += 1
        i += 1
        length, broken = Fraction(1), None
        if i < len(tokens) and TOKEN_KIND.get(tokens[i]) == "duration":
            length = DURATIONS[tokens[i]]
            i += 1
        if i < len(tokens) and TOKEN_KIND.get(tokens[i]) == "broken":
            broken = tokens[i]
            length = BROKEN_RHYTHMS[broken].fused or length
            i += 1
        notes.append((length, broken))
    bars.append((notes, ""))
    return [(n, end) for n, end in bars if n]


def _pairs(bar: list[tuple[Fraction, str | None]]) -> tuple[int, int]:
    """(dotted, snapped) pairs of neighbouring notes in a bar."""
    dotted = snapped = 0
    for (a, broken), (b, _) in zip(bar, bar[1:]):
        if broken in _DOTTED or (broken is None and a == 3 * b):
            dotted += 1
        elif broken in _SNAPPED or (broken is None and b == 3 * a):
            snapped += 1
    return dotted, snapped


def _has_stops(bar: list[tuple[Fraction, str | None]], length: Fraction) -> bool:
    run = best = 0
    for note, _ in bar:
        run = run + 1 if note == length else 0
        best = max(best, run)
    return best >= 3


def rhythm(tokens: Sequence[str]) -> Rhythm | None:
    """The rhythm of a tune's tokens (``M:.. K:.. body``), None when it has no notes."""
    bars = _bars(tokens)
    lengths = [length for notes, _ in bars for length, _ in notes]
    if not lengths:
        return None
    n = len(lengths)
    mean = sum(lengths, Fraction(0)) / n
    unit = Fraction(1, 2) if mean <= SIXTEENTHS else Fraction(1)
    dotted = snapped = 0
    for notes, _ in bars:
        d, s = _pairs(notes)
        dotted, snapped = dotted + d, snapped + s
    # a part ends at a closing repeat (or an ending's bar line after one) and at the end of the tune
    endings = [notes for k, (notes, end) in enumerate(bars) if end == ":|" or k == len(bars) - 1]
    stops = sum(_has_stops(notes, 2 * unit) for notes in endings) / len(endings)
    return Rhythm(notes=n, mean_length=mean, dotted=2 * dotted / n, snapped=2 * snapped / n,
                  short=sum(1 for x in lengths if x <= Fraction(1, 2)) / n, stops=stops, unit=unit)


def meter_of(tokens: Sequence[str]) -> str | None:
    return next((t[2:] for t in tokens if t in METER_TOKENS), None)


@dataclass(frozen=True)
class TuneType:
    name: str  # one of TUNE_TYPES
    tempo: str  # the ABC Q: value, e.g. '"Reel" 1/2=112'


def _name(meter: str, r: Rhythm) -> str:
    if meter == "2/4" and r.unit == 1:
        return "march" if r.dotted >= FREQUENT or r.short >= FREQUENT else "polka"
    if r.snapped >= FREQUENT_SNAPS and r.dotted + r.snapped >= 2 * FREQUENT:
        return "strathspey"
    if r.mean_length / r.unit > LONG_NOTES:
        return "march"
    if r.dotted >= FREQUENT or r.stops >= 0.5:
        return "hornpipe"
    return "reel"


def classify(tokens: Sequence[str]) -> TuneType | None:
    """The tune's type by the rule above and its ``Q:`` tempo; None without a meter or notes."""
    meter = meter_of(tokens)
    if meter in BY_METER:
        name, unit = BY_METER[meter], Fraction(1)
    elif meter in ("4/4", "2/4"):
        r = rhythm(tokens)
        if r is None:
            return None
        name, unit = _name(meter, r), r.unit
    else:
        return None
    tempo = TEMPI[name]
    beat = tempo.beat * unit / 8  # in whole notes
    return TuneType(name, f'"{name.capitalize()}" {beat.numerator}/{beat.denominator}={tempo.per_minute}')


def tune_type(tokens: Sequence[str]) -> str | None:
    """The tune's type (one of ``TUNE_TYPES``), e.g. "jig" for any 6/8 tune; None without a
    meter or notes."""
    found = classify(tokens)
    return found.name if found else None
