"""The music of the folk-rnn v2 vocabulary: what each token means in time and in pitch.

``schemas.vocab`` says which tokens there are; this module says what they mean, once, for every
part that reads or writes them (the ABC lexer and tokenizer, the validator, the model analysis and
the constrained sampler). It is pure data and small functions over the standard library.

Per-token facts are dicts keyed by token, in token id order (``TOKEN_KIND``, ``DURATION_TICKS``,
``PITCH_HEIGHT`` ...), so a table indexed by token id, for a tensor or a mask, is one call:
``by_id(PITCH_HEIGHT, 0)``.

Time is counted in units of L:1/8 (an eighth note). Exact lengths are integers of ticks,
``TICKS_PER_UNIT`` to the unit: a number every length of the vocabulary divides (durations /8
and /3, broken rhythms /4, tuplets of 2 to 9 notes). Pitch heights are semitones above ``C``
(``c`` is 12, ``C,`` is -12), reading a token's letter as natural unless it carries its own
accidental (the key signature of the tune's mode is not applied).
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple, TypeVar

from folkrnn.schemas.vocab import (
    BROKEN_TOKENS,
    CHORD_CLOSE,
    CHORD_OPEN,
    DURATIONS,
    END,
    METERS,
    MODES,
    PITCH_TOKENS,
    START,
    TOKENS,
    TUPLET_TOKENS,
    token_class,
)

T = TypeVar("T")


def by_id(table: dict[str, T], default: T) -> list[T]:
    """A per-token table as a list indexed by token id (``default`` for tokens it lacks)."""
    return [table.get(token, default) for token in TOKENS]


# --- Token kinds ---------------------------------------------------------------------------------
# The vocabulary's classes, with the two that hold tokens of opposite roles split: a grammar
# (the validator's scanner, the sampler's masks) must tell <s> from </s> and [ from ].
KINDS: tuple[str, ...] = (
    "start", "end", "meter", "mode", "bar", "pitch", "rest", "chord_open", "chord_close",
    "duration", "broken", "tuplet",
)
_SPLIT_KINDS = {START: "start", END: "end", CHORD_OPEN: "chord_open", CHORD_CLOSE: "chord_close"}
TOKEN_KIND: dict[str, str] = {token: _SPLIT_KINDS.get(token) or token_class(token) for token in TOKENS}
assert set(TOKEN_KIND.values()) == set(KINDS), "token kinds out of step with folkrnn.schemas.vocab's classes"
# Tokens that start a note, rest or chord: the elements that take time.
ELEMENT_STARTS = frozenset(t for t, kind in TOKEN_KIND.items() if kind in ("pitch", "rest", "chord_open"))


# --- Durations -----------------------------------------------------------------------------------
TICKS_PER_UNIT = 241_920  # 8 * 3 * 4 * 2520: /8 and /3 durations, /4 broken rhythms, tuplets 2..9
EIGHTH = Fraction(1, 8)  # the unit, in whole notes

# Duration token -> ticks of a unit-length note carrying it (the multiplier of vocab.DURATIONS, in ticks).
DURATION_TICKS: dict[str, int] = {t: TICKS_PER_UNIT * f.numerator // f.denominator for t, f in DURATIONS.items()}
assert all(ticks * f.denominator == TICKS_PER_UNIT * f.numerator
           for ticks, f in zip(DURATION_TICKS.values(), DURATIONS.values())), "a duration does not divide the unit"


def eighths(ticks: int | Fraction) -> Fraction:
    """A length in ticks as an exact number of eighths (units of L:1/8)."""
    return Fraction(ticks) / TICKS_PER_UNIT


# --- Broken rhythms ------------------------------------------------------------------------------
class BrokenRhythm(NamedTuple):
    """What a broken-rhythm token does to the note before it and the note after it."""

    fused: Fraction | None  # a duration the token also gives the first note (``/2>``, ``4>``), or None
    first: Fraction  # factor of the first note's length (after ``fused``)
    second: Fraction  # factor of the second note's length


BROKEN_RHYTHMS: dict[str, BrokenRhythm] = {
    ">": BrokenRhythm(None, Fraction(3, 2), Fraction(1, 2)),
    "<": BrokenRhythm(None, Fraction(1, 2), Fraction(3, 2)),
    "2>": BrokenRhythm(None, Fraction(7, 4), Fraction(1, 4)),
    "2<": BrokenRhythm(None, Fraction(1, 4), Fraction(7, 4)),
    "/2>": BrokenRhythm(DURATIONS["/2"], Fraction(3, 2), Fraction(1, 2)),
    "/2<": BrokenRhythm(DURATIONS["/2"], Fraction(1, 2), Fraction(3, 2)),
    "4>": BrokenRhythm(DURATIONS["4"], Fraction(3, 2), Fraction(1, 2)),
}
assert set(BROKEN_RHYTHMS) == BROKEN_TOKENS, "broken-rhythm table out of step with folkrnn.schemas.vocab"


def fused_broken_token(duration: str, direction: str) -> str | None:
    """The one token for a duration followed by ``>`` or ``<`` (``/2`` ``>`` is ``/2>``), or None."""
    token = duration + direction
    rule = BROKEN_RHYTHMS.get(token)
    return token if rule is not None and rule.fused is not None else None


# --- Meters: tuplets and bars ----------------------------------------------------------------------
# Meters whose beat is a dotted quarter: (5, (7 and (9 take the time of 3 there, of 2 elsewhere.
COMPOUND_METERS = frozenset({"6/8", "9/8", "12/8"})
TUPLET_NOTES: dict[str, int] = {t: int(t[1:]) for t in TOKENS if t in TUPLET_TOKENS}  # ``(3`` -> 3


def tuplet_q(p: int, compound: bool) -> int:
    """Notes of a ``(p`` tuplet take the time of q notes (ABC 2.1, 4.13)."""
    if p in (2, 4, 8):
        return 3
    if p in (3, 6):
        return 2
    return 3 if compound else 2


def tuplet_ratio(p: int, compound: bool) -> Fraction:
    """Factor of each note's length inside a ``(p`` tuplet: q/p."""
    return Fraction(tuplet_q(p, compound), p)


# Meter (without ``M:``) -> length of a full bar in eighths, and in ticks.
BAR_EIGHTHS: dict[str, Fraction] = {m: 8 * Fraction(m) for m in METERS}
BAR_TICKS: dict[str, int] = {m: int(length * TICKS_PER_UNIT) for m, length in BAR_EIGHTHS.items()}
assert all(length.denominator == 1 for length in BAR_EIGHTHS.values())


def bar_eighths(meter: str | None) -> Fraction | None:
    """A full bar in eighths (``4/4`` -> 8, ``6/8`` -> 6); None for no meter or one not in the vocabulary."""
    return BAR_EIGHTHS.get(meter) if meter else None


# How fast a tune without a ``Q:`` field is played: a moderate session speed for its meter, as an
# ABC ``Q:`` value (the meter's beat per minute: a quarter, a dotted quarter in compound meters,
# a half in 3/2). A tune's own ``Q:`` (its tune type's tempo) wins.
PLAYBACK_TEMPO: dict[str, str] = {"2/4": "1/4=120", "3/4": "1/4=138", "4/4": "1/4=176", "6/8": "3/8=112",
                                  "9/8": "3/8=120", "12/8": "3/8=120", "3/2": "1/2=84"}
assert set(PLAYBACK_TEMPO) == set(METERS)


# --- Pitch ---------------------------------------------------------------------------------------
LETTERS = "CDEFGAB"
LETTER_SEMITONES: tuple[int, ...] = (0, 2, 4, 5, 7, 9, 11)  # above C, of the natural letters C..B
SEMITONE: dict[str, int] = dict(zip(LETTERS, LETTER_SEMITONES))
# Written accidental -> semitones (ABC 2.1); the vocabulary spells only ^, = and _.
ACCIDENTALS: dict[str, int] = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}
SPELLING: dict[int, str] = {alteration: text for text, alteration in ACCIDENTALS.items()}
# Scale of each mode in semitones above its tonic.
MODE_SCALES: dict[str, tuple[int, ...]] = {
    "maj": (0, 2, 4, 5, 7, 9, 11),
    "min": (0, 2, 3, 5, 7, 8, 10),
    "dor": (0, 2, 3, 5, 7, 9, 10),
    "mix": (0, 2, 4, 5, 7, 9, 10),
}
assert tuple(MODE_SCALES) == MODES, "mode table out of step with folkrnn.schemas.vocab"


def parse_pitch(text: str) -> tuple[int | None, str, int]:
    """(alteration or None when unmarked, letter C..B, octave) of a pitch such as ``^f``, ``=B,``, ``c'``.

    The octave counts from the ABC ``C`` (0): ``c`` is 1, ``C,`` is -1.
    """
    accidental = text[:2] if text[:2] in ("^^", "__") else text[:1] if text[:1] in "^=_" else ""
    letter = text[len(accidental)]
    marks = text[len(accidental) + 1:]
    octave = (1 if letter.islower() else 0) + marks.count("'") - marks.count(",")
    return ACCIDENTALS.get(accidental), letter.upper(), octave


def pitch_text(alteration: int | None, letter: str, octave: int) -> str:
    """The ABC spelling of a pitch: the inverse of ``parse_pitch``."""
    accidental = "" if alteration is None else SPELLING[alteration]
    if octave <= 0:
        return accidental + letter + "," * -octave
    return accidental + letter.lower() + "'" * (octave - 1)


_PARSED = {t: parse_pitch(t) for t in TOKENS if t in PITCH_TOKENS}
PITCH_LETTER: dict[str, str] = {t: letter for t, (_, letter, _) in _PARSED.items()}
PITCH_ALTERATION: dict[str, int | None] = {t: alteration for t, (alteration, _, _) in _PARSED.items()}
PITCH_HEIGHT: dict[str, int] = {
    t: 12 * octave + SEMITONE[letter] + (alteration or 0) for t, (alteration, letter, octave) in _PARSED.items()
}
# The tonic of every K:C<mode>: a C of any octave, unmarked or natural (``^C`` and ``_c`` are not).
TONIC_TOKENS = frozenset(t for t, (alteration, letter, _) in _PARSED.items() if letter == "C" and not alteration)


def pitch_height(token: str) -> int | None:
    """Semitones above ``C`` of a pitch token (``c`` is 12, ``^F,`` is -6), None for other tokens."""
    return PITCH_HEIGHT.get(token)


def sounding_pitch(token: str, signature: dict[str, int] | None = None) -> int | None:
    """Semitones above ``C`` of a pitch token as heard: an unmarked letter takes the key signature's
    alteration (letter -> -1, 0, +1); None for an unmarked token when no signature is given."""
    alteration = PITCH_ALTERATION.get(token)
    if alteration is not None:
        return PITCH_HEIGHT[token]
    if signature is None or token not in PITCH_HEIGHT:
        return None
    return PITCH_HEIGHT[token] + signature.get(PITCH_LETTER[token], 0)

