"""Tunes printed in keys people play: folk-rnn's tokens (always in C) re-spelled in another key.

The model writes every tune in C (``K:Cmaj``, ``K:Cmin``, ``K:Cdor``, ``K:Cmix``). A book can print
it in C (``KEEP``), in one key for every tune (a tonic such as ``D`` or ``Bb``: each tune keeps its
mode, K:Dmaj, K:Ddor ...) or in a session key (``SESSION``): one of the two keys musicians use most
for the tune's mode (``SESSION_TONICS``), the one that keeps the tune inside ``PLAYING_RANGE``.

How a tune moves, so that every sounding pitch moves by the same interval:

* Reading the C tokens: an unmarked letter takes the ``K:C<mode>`` signature, an accidental holds for
  that letter and octave to the next bar line (ABC 2.1, 4.2).
* Each note moves by the same number of letter steps as the tonic (``shift_note``, the ingest's
  interval-preserving move), so it keeps its role in the scale: C's flat third ``_E`` is D major's
  ``=F``, C's sharp fourth ``^F`` is D major's ``^G``. A note that would need a double sharp or flat,
  or would name a white key with an accidental the key signature does not have (``^E``, ``^B``,
  ``_F``, ``_C``), is spelled on the neighbouring letter instead (D major: C's D sharp is ``=F``).
* Writing: an accidental is written only where the new key signature and the bar's earlier
  accidentals do not already give the note its pitch, under either octave rule readers use for
  bar accidentals (same letter and octave, ABC 2.1's; or same letter in any octave, music21's and
  some players'): a note after ``^f`` in another octave gets its own mark, so every reader hears
  the same tune.

Choosing where a tune goes: every candidate (each key of the mode, moved up or down, within two
octaves) is scored by its notes outside ``PLAYING_RANGE`` (D4-B6); the fewest wins, then the fewest
outside ``HOME_RANGE`` (D4-B5, where session tunes sit), then the smaller move, the key listed
first, and up before down. A forced key chooses only its octave this way.
The two keys of a mode are a fourth or a fifth apart, so a tune spanning up to 26 semitones (two
octaves and a tone) always fits the 33 of the range.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.music import LETTER_SEMITONES, LETTERS, PITCH_HEIGHT, parse_pitch, pitch_text
from folkrnn.schemas.vocab import BAR_TOKENS, MODES, PITCH_TOKENS
from folkrnn.transforms.abc.header import Key
from folkrnn.transforms.abc.tokenize import shift_note

SESSION = "session"
KEEP = "C"
# The keys musicians use for each mode, most usual first (tonics; the mode is the tune's own).
SESSION_TONICS: dict[str, tuple[str, str]] = {
    "maj": ("D", "G"),
    "min": ("E", "A"),
    "dor": ("E", "A"),
    "mix": ("D", "A"),
}
assert tuple(SESSION_TONICS) == MODES, "session keys out of step with the vocabulary's modes"
# Sounding range of a fiddle and a whistle together, as MIDI numbers: D4 (ABC D) to B6 (ABC b').
PLAYING_RANGE: tuple[int, int] = (62, 95)
# Where most session tunes sit, D4 (ABC D) to B5 (ABC b): the D whistle's written range and the
# fiddle's first position. Among placements inside PLAYING_RANGE, fewer notes above it win.
HOME_RANGE: tuple[int, int] = (62, 83)
MIDDLE_C = 60  # the ABC C, height 0 in folkrnn.schemas.music
TONIC_RE = re.compile(r"([A-G])([#b]?)")


class _Written(NamedTuple):
    """A pitch token as written: letter (0..6 for C..B), octave (ABC C is 0), its accidental or None."""

    letter: int
    octave: int
    accidental: int | None


_WRITTEN: dict[str, _Written] = {}
for _token in PITCH_TOKENS:
    _accidental, _letter, _octave = parse_pitch(_token)
    _WRITTEN[_token] = _Written(LETTERS.index(_letter), _octave, _accidental)


def check_key_choice(text: str) -> str:
    """The ``--key`` value spelled as this module takes it (``session``, ``C`` or a tonic such as ``D``,
    ``Bb``, ``F#``; the letter in either case); raises UsageError saying what is accepted otherwise."""
    if text.strip().lower() == SESSION:
        return SESSION
    match = TONIC_RE.fullmatch(text.strip().capitalize())
    if match:
        return match.group(0)
    raise UsageError(f"--key {text!r} is not a key: give 'session' (a session key for each tune's mode), "
                     "'C' (as generated) or a tonic letter A-G with an optional # or b, e.g. D, Bb, F# "
                     "(each tune keeps its mode)")


def forced_key(tonic: str, mode: str) -> Key:
    """``tonic`` in ``mode``; a key whose signature would need a double sharp or flat (G# major,
    Fb major ...) is written on the enharmonic tonic instead (Ab major, E major)."""
    letter, accidental = TONIC_RE.fullmatch(tonic).groups()
    key = Key(LETTERS.index(letter), {"#": 1, "b": -1, "": 0}[accidental], mode)
    if max(abs(a) for a in key.signature()) <= 1:
        return key
    other = (key.letter + (1 if key.accidental > 0 else -1)) % 7
    return Key(other, (key.tonic_semitone - LETTER_SEMITONES[other] + 6) % 12 - 6, mode)


@functools.cache
def signature_of(key: Key) -> tuple[int, ...]:
    """``key.signature()``, computed once per key."""
    return key.signature()


def key_name(key: Key) -> str:
    """As written after ``K:``: ``Dmaj``, ``Bbdor``, ``F#min``."""
    return str(key)


def moves_from_c(key: Key) -> list[tuple[int, int]]:
    """(semitones, letter steps) that take C to ``key``'s tonic, up or down within two octaves,
    smallest move first (up before down on a tie)."""
    up = (LETTER_SEMITONES[key.letter] + key.accidental, key.letter)
    moves = [(up[0] + 12 * k, up[1] + 7 * k) for k in (-2, -1, 0, 1, 2)]
    return sorted(moves, key=lambda m: (abs(m[0]), m[0] < 0))


@dataclass(frozen=True)
class Placement:
    """Where a tune is printed: its key and the move from C that takes it there."""

    key: Key
    semitones: int
    steps: int

    @property
    def name(self) -> str:
        return key_name(self.key)


def tune_mode(tokens: Sequence[str]) -> str:
    """The mode of the tune's first ``K:`` token; ``maj`` without one (as ``detokenize`` prints it)."""
    mode = next((t[3:] for t in tokens if t.startswith("K:C")), "maj")
    return mode if mode in MODES else "maj"


def sounding_heights(tokens: Sequence[str], mode: str) -> list[int | None]:
    """Semitones above the ABC C of each token as heard in ``K:C<mode>`` (None for tokens that are not
    notes): a letter takes the signature unless an accidental marked it earlier in the bar, at the
    same octave (ABC 2.1)."""
    signature = signature_of(Key(0, 0, mode))
    marked: dict[tuple[int, int], int] = {}
    heights: list[int | None] = []
    for token in tokens:
        note = _WRITTEN.get(token)
        if note is None:
            if token in BAR_TOKENS:
                marked = {}
            heights.append(None)
            continue
        if note.accidental is not None:
            marked[note.letter, note.octave] = note.accidental
        natural = PITCH_HEIGHT[token] - (note.accidental or 0)
        heights.append(natural + marked.get((note.letter, note.octave), signature[note.letter]))
    return heights


def out_of_range(heights: Counter, semitones: int, midi_range: tuple[int, int] = PLAYING_RANGE) -> int:
    """Notes outside ``midi_range`` once every note is moved by ``semitones`` (``heights``: notes by height)."""
    low, high = midi_range[0] - MIDDLE_C - semitones, midi_range[1] - MIDDLE_C - semitones
    return sum(n for h, n in heights.items() if not low <= h <= high)


def candidates(choice: str, mode: str) -> list[Placement]:
    """Every placement a ``--key`` choice allows for a tune of ``mode``, in tie-break order."""
    tonics = SESSION_TONICS[mode] if choice == SESSION else (choice,)
    ranked = []
    for rank, tonic in enumerate(tonics):
        key = forced_key(tonic, mode)
        ranked += [(abs(s), rank, s < 0, Placement(key, s, k)) for s, k in moves_from_c(key)]
    return [placement for *_, placement in sorted(ranked, key=lambda r: r[:3])]


def choose_placement(heights: Sequence[int | None], choice: str, mode: str) -> Placement:
    """The candidate with the fewest notes outside the playing range, then outside the home range;
    the first in order on a tie."""
    counted = Counter(h for h in heights if h is not None)
    return min(candidates(choice, mode),
               key=lambda p: (out_of_range(counted, p.semitones), out_of_range(counted, p.semitones, HOME_RANGE)))


class _Speller:
    """Writes notes in a key: an accidental only where a reader would not already hear the pitch."""

    def __init__(self, key: Key):
        self.signature = signature_of(key)
        self.by_octave: dict[tuple[int, int], int] = {}  # ABC 2.1: an accidental holds for its octave
        self.by_letter: dict[int, int] = {}  # other readers: for the letter in every octave

    def new_bar(self) -> None:
        self.by_octave, self.by_letter = {}, {}

    def spell(self, letter: int, octave: int, alteration: int) -> str:
        implied = self.signature[letter]
        heard = (self.by_octave.get((letter, octave), implied), self.by_letter.get(letter, implied))
        if heard == (alteration, alteration):
            return pitch_text(None, LETTERS[letter], octave)
        self.by_octave[letter, octave] = self.by_letter[letter] = alteration
        return pitch_text(alteration, LETTERS[letter], octave)


# (letter, alteration) of the white keys named on a neighbour's letter: E#, B#, Fb, Cb.
WHITE_KEYS_ON_NEIGHBOURS = frozenset({(2, 1), (6, 1), (3, -1), (0, -1)})


def plain_spelling(letter: int, octave: int, alteration: int, signature: Sequence[int]) -> tuple[int, int, int]:
    """The same pitch on the neighbouring letter when ``letter`` would need a double sharp or flat, or
    would name a white key the key signature does not (D major: a sounding F is =F, never ^E)."""
    while abs(alteration) > 1 or (alteration != signature[letter] and (letter, alteration) in WHITE_KEYS_ON_NEIGHBOURS):
        height = 12 * octave + LETTER_SEMITONES[letter] + alteration
        letter, octave, alteration = shift_note(letter, octave, height, 0, 1 if alteration > 0 else -1)
    return letter, octave, alteration


def move_tokens(tokens: Sequence[str], heights: Sequence[int | None], placement: Placement) -> list[str]:
    """The tokens with every note moved and spelled in the placement's key, and ``K:`` naming it."""
    speller = _Speller(placement.key)
    out = [] if any(t.startswith("K:") for t in tokens) else [f"K:{placement.name}"]
    for token, height in zip(tokens, heights):
        if height is None:
            if token in BAR_TOKENS:
                speller.new_bar()
            out.append(f"K:{placement.name}" if token.startswith("K:") else token)
            continue
        note = _WRITTEN[token]
        moved = shift_note(note.letter, note.octave, height, placement.semitones, placement.steps)
        out.append(speller.spell(*plain_spelling(*moved, speller.signature)))
    return out


def printed_key(tokens: Sequence[str], choice: str) -> str:
    """The key ``in_key`` prints the tune in, such as ``Dmaj``, without writing its notes."""
    mode = tune_mode(tokens)
    if choice == KEEP:
        return f"C{mode}"
    return choose_placement(sounding_heights(tokens, mode), choice, mode).name


def in_key(tokens: Sequence[str], choice: str) -> tuple[list[str], str]:
    """(tokens to print, the printed key such as ``Dmaj``) of a tune for a ``--key`` choice.

    ``KEEP`` gives the tokens unchanged (folk-rnn's C); the tokens may hold <s>, </s> and M:.
    """
    mode = tune_mode(tokens)
    if choice == KEEP:
        return list(tokens), f"C{mode}"
    heights = sounding_heights(tokens, mode)
    placement = choose_placement(heights, choice, mode)
    return move_tokens(tokens, heights, placement), placement.name
