"""ABC header fields: keys, meters and unit note lengths, mapped onto the folk-rnn v2 vocabulary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from folkrnn.schemas.music import BAR_EIGHTHS, EIGHTH, LETTER_SEMITONES, LETTERS, MODE_SCALES
from folkrnn.schemas.vocab import METERS
from folkrnn.transforms.abc.errors import TuneRejected

# ABC 2.1 mode names: only the first three letters count, case-insensitively.
MODE_NAMES = {
    "": "maj", "m": "min", "maj": "maj", "ion": "maj", "min": "min", "aeo": "min",
    "dor": "dor", "mix": "mix",
}
OUT_OF_VOCAB_MODES = {"lyd": "lydian", "phr": "phrygian", "loc": "locrian"}


@dataclass(frozen=True)
class Key:
    letter: int  # 0..6 for C..B
    accidental: int  # -1 flat, 0, +1 sharp
    mode: str  # maj, min, dor, mix

    @property
    def tonic_semitone(self) -> int:
        return (LETTER_SEMITONES[self.letter] + self.accidental) % 12

    def signature(self) -> tuple[int, ...]:
        """Alteration (-1, 0, +1) of each letter C..B in this key's signature."""
        scale = MODE_SCALES[self.mode]
        alterations = [0] * 7
        for degree in range(7):
            letter = (self.letter + degree) % 7
            wanted = (self.tonic_semitone + scale[degree]) % 12
            diff = (wanted - LETTER_SEMITONES[letter]) % 12
            alterations[letter] = diff - 12 if diff > 6 else diff
        return tuple(alterations)

    def __str__(self) -> str:
        return LETTERS[self.letter] + {-1: "b", 0: "", 1: "#"}[self.accidental] + self.mode


_KEY_RE = re.compile(r"^([A-Ga-g])([#b]?)\s*([A-Za-z]*)")
_KEY_CLAUSE_RE = re.compile(
    r"\b(?:(?:clef|middle|transpose|octave|stafflines|m)\s*=\s*\S+"
    r"|(?:treble|bass|alto|tenor|perc|none)[0-9+-]*(?=\s|$))",
    re.IGNORECASE,
)


def parse_key(value: str) -> Key:
    """Parse the value of a ``K:`` field into a Key, or reject what the vocabulary cannot say."""
    text = value.split("%", 1)[0].strip()
    if text.lower() == "none":
        raise TuneRejected("header", "key_not_in_vocab", "K:none has no tonic; the vocabulary needs one")
    text = _KEY_CLAUSE_RE.sub("", text).strip()
    if not text:
        raise TuneRejected("header", "key_not_in_vocab", f"K:{value.strip()} has no tonic; the vocabulary needs one")
    if text.upper().startswith("HP"):
        raise TuneRejected("header", "key_not_in_vocab", f"K:{value.strip()} (highland pipes) is not in the vocabulary")
    match = _KEY_RE.match(text)
    if not match:
        raise TuneRejected("header", "key_unparseable", f"cannot read the key K:{value.strip()}")
    letter, accidental, mode_word = match.groups()
    rest = text[match.end():].strip()
    mode_key = mode_word[:3].lower()
    if mode_key in OUT_OF_VOCAB_MODES:
        raise TuneRejected("header", "mode_not_in_vocab",
                           f"K:{value.strip()} is {OUT_OF_VOCAB_MODES[mode_key]}; only maj, min, dor and mix are")
    if mode_key not in MODE_NAMES:
        if mode_key in ("exp",) or mode_word[:1] in "^_=":
            rest = mode_word + rest
            mode_key = ""
        else:
            raise TuneRejected("header", "key_unparseable", f"unknown mode {mode_word!r} in K:{value.strip()}")
    if rest:
        raise TuneRejected("header", "key_not_in_vocab",
                           f"K:{value.strip()} lists explicit accidentals ({rest}); the vocabulary has no such key")
    return Key(LETTERS.index(letter.upper()), {"#": 1, "b": -1, "": 0}[accidental], MODE_NAMES[mode_key])


@dataclass(frozen=True)
class Meter:
    token_meter: str  # one of folkrnn.schemas.vocab.METERS
    written: str  # as the tune wrote it
    mapped: bool  # True when C| or 2/2 became 4/4

    @property
    def value(self) -> Fraction:
        """A full bar in whole notes (6/8 -> 3/4)."""
        return BAR_EIGHTHS[self.token_meter] * EIGHTH


def parse_meter(value: str) -> Meter:
    """Parse ``M:``: C is 4/4; C| and 2/2 become 4/4 (same bar length, recorded); others must be in the vocabulary."""
    written = value.split("%", 1)[0].strip()
    compact = written.replace(" ", "")
    if compact == "C":
        return Meter("4/4", written, False)
    if compact in ("C|", "2/2"):
        return Meter("4/4", written, True)
    if compact in METERS:
        return Meter(compact, written, False)
    raise TuneRejected("header", "meter_not_in_vocab",
                       f"M:{written} is not one of {', '.join(METERS)} (or C, C|, 2/2)")


def default_unit_length(meter: Meter) -> Fraction:
    """ABC 2.1: L defaults to 1/16 when the meter is below 0.75, else 1/8 (judged on the written meter)."""
    written = meter.written.replace(" ", "")
    if written in ("C", "C|"):
        return Fraction(1, 8)
    num, den = written.split("/")
    return Fraction(1, 16) if Fraction(int(num), int(den)) < Fraction(3, 4) else Fraction(1, 8)


def parse_unit_length(value: str) -> Fraction:
    text = value.split("%", 1)[0].strip().replace(" ", "")
    match = re.fullmatch(r"(\d+)/(\d+)|1", text)
    if not match or (match.group(2) and int(match.group(2)) == 0):
        raise TuneRejected("header", "length_unparseable", f"cannot read the unit note length L:{value.strip()}")
    return Fraction(1) if text == "1" else Fraction(int(match.group(1)), int(match.group(2)))
