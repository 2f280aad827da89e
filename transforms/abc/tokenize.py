"""ABC text <-> folk-rnn v2 tokens.

``tokenize_tune`` reads one tune (header and body), transposes it so its tonic is C and returns
the v2 token sequence ``M:<meter> K:C<mode> body...``. ``detokenize`` writes tokens back as an
ABC 2.1 tune; tokens -> ABC -> tokens is the identity.

Transposition is a map on written notes, not on sounding pitches: every letter moves by the same
number of letter steps and the tonic lands on C. Because the source key and C in the same mode have
the same scale, a note without an accidental stays without one (the key signature gives it the
right pitch) and an explicit accidental is recomputed for the new letter. Bar-scoped accidentals
therefore keep working whichever octave rule a reader applies.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from folkrnn.schemas.music import (
    BROKEN_RHYTHMS,
    COMPOUND_METERS,
    EIGHTH,
    LETTER_SEMITONES,
    LETTERS,
    TUPLET_NOTES,
    fused_broken_token,
    pitch_text,
    tuplet_ratio,
)
from folkrnn.schemas.vocab import (
    BAR_TOKENS,
    BROKEN_TOKENS,
    DURATION_OF_LENGTH,
    DURATIONS,
    PITCH_TOKENS,
    TUPLET_TOKENS,
)
from folkrnn.transforms.abc.errors import TuneRejected
from folkrnn.transforms.abc.header import (
    Key,
    default_unit_length,
    parse_key,
    parse_meter,
    parse_unit_length,
)
from folkrnn.transforms.abc.lexer import Bar, Body, Broken, Chord, Note, Rest, Tuplet, lex_body


@dataclass
class Header:
    fields: dict[str, str]  # first value of each field, as written
    titles: list[str]
    body: str


def split_header(text: str) -> Header:
    """Separate header fields from the body: the header runs to the first K: line (ABC 2.1).

    Lines in the header that are not fields (a stray tempo, a continued directive) are skipped.
    """
    fields: dict[str, str] = {}
    titles: list[str] = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i, line in enumerate(lines):
        stripped = line.strip()
        if len(stripped) < 2 or stripped[1] != ":" or not stripped[0].isalpha():
            continue
        name, value = stripped[0], stripped[2:].strip()
        if name == "T":
            titles.append(value)
        else:  # later values override earlier ones: file-header fields come first
            fields[name] = value
        if name == "K":
            return Header(fields, titles, "\n".join(lines[i + 1:]))
    raise TuneRejected("header", "missing_key", "no K: field ends the header, so the body cannot be found")


@dataclass
class Tokenized:
    tokens: list[str]
    meter: str  # e.g. 6/8
    mode: str  # maj, min, dor, mix
    transpose: int  # semitones added
    original_meter: str
    original_key: str
    meter_mapped: bool
    title: str | None
    removed: Counter = field(default_factory=Counter)

    @property
    def content_hash(self) -> str:
        return hashlib.sha1(" ".join(self.tokens).encode("utf-8")).hexdigest()


def tokenize_tune(text: str) -> Tokenized:
    """One ABC tune to v2 tokens, transposed to C; raises TuneRejected saying why not."""
    header = split_header(text)
    if "M" not in header.fields:
        raise TuneRejected("header", "missing_meter", "no M: field; add the meter (e.g. M:6/8)")
    meter = parse_meter(header.fields["M"])
    key = parse_key(header.fields["K"])
    unit = parse_unit_length(header.fields["L"]) if "L" in header.fields else default_unit_length(meter)
    body = lex_body(header.body, unit, meter.token_meter, header.fields["K"])
    if not any(isinstance(e, (Note, Chord)) for e in body.elements):
        raise TuneRejected("tokenize", "empty_body", "the tune has no notes")
    tokens, shift = transpose_to_c(body, key)
    return Tokenized(
        tokens=[f"M:{meter.token_meter}", f"K:C{key.mode}", *tokens],
        meter=meter.token_meter,
        mode=key.mode,
        transpose=shift,
        original_meter=meter.written,
        original_key=header.fields["K"],
        meter_mapped=meter.mapped,
        title=header.titles[0] if header.titles else None,
        removed=body.removed,
    )


def candidate_shifts(key: Key) -> list[tuple[int, int]]:
    """(semitones, letter steps) that take the tonic to C, smallest move first."""
    down_semitones = -key.tonic_semitone
    down_steps = -key.letter
    candidates = []
    for octave in (0, 1, -1, 2, -2):
        candidates.append((down_semitones + 12 * octave, down_steps + 7 * octave))
    if key.tonic_semitone == 0 and key.letter == 0:
        return sorted(candidates, key=lambda c: abs(c[0]))
    return sorted(candidates, key=lambda c: (abs(c[0]), c[0] < 0))


def transpose_to_c(body: Body, key: Key) -> tuple[list[str], int]:
    """Body tokens for the first shift whose every pitch is in the vocabulary."""
    problem = ""
    for semitones, steps in candidate_shifts(key):
        try:
            return body_tokens(body, semitones, steps), semitones
        except _PitchOutOfVocab as err:
            problem = problem or str(err)
    raise TuneRejected("transpose", "pitch_not_in_vocab",
                       f"no transposition to C keeps every note in the vocabulary: {problem}")


class _PitchOutOfVocab(Exception):
    pass


def shift_note(letter: int, octave: int, height: int, semitones: int, steps: int) -> tuple[int, int, int]:
    """A note moved ``steps`` letters and ``semitones`` up: its letter (0..6 for C..B), octave and the
    alteration its new letter needs to sound ``height + semitones`` (height = 12 * octave + letter's
    semitone + alteration, in any one octave numbering)."""
    index = letter + steps
    new_letter, new_octave = index % 7, octave + index // 7
    return new_letter, new_octave, height + semitones - (12 * new_octave + LETTER_SEMITONES[new_letter])


def pitch_token(note: Note, semitones: int, steps: int) -> str:
    key = (note.letter, note.octave, note.accidental, semitones, steps)
    token = _PITCH_TOKENS.get(key)
    if token is None:
        token = _pitch_token(note, semitones, steps)  # raises _PitchOutOfVocab (never cached)
        if len(_PITCH_TOKENS) < 65536:
            _PITCH_TOKENS[key] = token
    return token


_PITCH_TOKENS: dict[tuple, str] = {}  # (letter, octave, accidental, semitones, steps) -> token


def _pitch_token(note: Note, semitones: int, steps: int) -> str:
    height = 12 * note.octave + LETTER_SEMITONES[note.letter] + (note.accidental or 0)
    letter, octave, alteration = shift_note(note.letter, note.octave, height, semitones, steps)
    if note.accidental is None:
        alteration = None
    elif not -1 <= alteration <= 1:
        raise _PitchOutOfVocab(f"{LETTERS[note.letter]} would need a double accidental")
    token = pitch_text(alteration, LETTERS[letter], octave - 4)  # scientific octave 4 is the ABC C
    if token not in PITCH_TOKENS:
        raise _PitchOutOfVocab(f"{token} is outside the vocabulary's range")
    return token


# Duration tokens by the length in whole notes as (numerator, denominator): a tuple of ints hashes
# fast, a Fraction does not.
_DURATION_TOKENS = {((eighths * EIGHTH).numerator, (eighths * EIGHTH).denominator): token
                    for eighths, token in DURATION_OF_LENGTH.items() if eighths != 1}
_ONE_EIGHTH = (EIGHTH.numerator, EIGHTH.denominator)


def duration_token(length: Fraction) -> str | None:
    key = (length.numerator, length.denominator)
    if key == _ONE_EIGHTH:
        return None
    token = _DURATION_TOKENS.get(key)
    if token is None:
        eighths = length / EIGHTH
        raise TuneRejected("tokenize", "duration_not_in_vocab",
                           f"a length of {eighths} eighth notes has no token")
    return token


def body_tokens(body: Body, semitones: int, steps: int) -> list[str]:
    tokens: list[str] = []
    # The lexer hands out one Note object for each note as written, so most notes of a tune are
    # repeats of a few objects: their tokens are worked out once (by id: all alive during this call).
    of_note: dict[int, tuple[str, ...]] = {}
    for element in body.elements:
        if type(element) is Note:
            note_tokens = of_note.get(id(element))
            if note_tokens is None:
                pitch = pitch_token(element, semitones, steps)
                duration = duration_token(element.length)
                note_tokens = of_note[id(element)] = (pitch,) if duration is None else (pitch, duration)
            tokens.extend(note_tokens)
        elif isinstance(element, Rest):
            tokens.append("z")
            _append_duration(tokens, element.length)
        elif isinstance(element, Chord):
            tokens.append("[")
            tokens.extend(pitch_token(n, semitones, steps) for n in element.notes)
            tokens.append("]")
            _append_duration(tokens, element.length)
        elif isinstance(element, Tuplet):
            tokens.append(f"({element.p}")
        elif isinstance(element, Broken):
            tokens.append(_broken_token(tokens, element))
        elif isinstance(element, Bar):
            tokens.append(element.token)
    while tokens and tokens[0] == "|":  # a bar line before the first note says nothing
        tokens.pop(0)
    return tokens


def _append_duration(tokens: list[str], length: Fraction) -> None:
    token = duration_token(length)
    if token is not None:
        tokens.append(token)


def _broken_token(tokens: list[str], broken: Broken) -> str:
    if broken.count >= 3:
        raise TuneRejected("tokenize", "broken_rhythm_not_in_vocab", f"{broken.direction * broken.count} has no token")
    if broken.count == 2:
        return "2" + broken.direction
    # the vocabulary fuses a /2 or 4 length with the broken rhythm that follows it
    fused = fused_broken_token(tokens[-1], broken.direction) if tokens else None
    if fused is not None:
        tokens.pop()
        return fused
    return broken.direction


# -- tokens -> ABC ---------------------------------------------------------------------------

BROKEN_ABC = {">": ">", "<": "<", "2>": ">>", "2<": "<<", "/2>": "/2>", "/2<": "/2<", "4>": "4>"}
BARS_PER_LINE = 4


# Lengths abcm2ps cannot draw as one note ("too much dotted"), written as two tied notes when typesetting.
TIED_LENGTHS = {"5": ("4", ""), "9": ("8", ""), "5/2": ("2", "/2")}


def detokenize(tokens: list[str], *, number: int | str = 1, title: str = "", typeset: bool = False) -> str:
    """v2 tokens (``M:.. K:.. body``, optional <s> and </s>) as one ABC 2.1 tune.

    ``typeset`` writes lengths of 5, 9 and 5/2 eighths as two tied notes, which engravers can draw;
    the tokenizer drops ties, so only the default form reads back to the same tokens.
    """
    body = [t for t in tokens if t not in ("<s>", "</s>")]
    meter = next((t[2:] for t in body if t.startswith("M:")), "4/4")
    mode_token = next((t[2:] for t in body if t.startswith("K:")), "Cmaj")
    notes = [t for t in body if not t.startswith(("M:", "K:"))]
    lines = [f"X:{number}", f"T:{title or f'Tune {number}'}", f"M:{meter}", "L:1/8", f"K:{mode_token}",
             abc_body(notes, meter, typeset)]
    return "\n".join(lines) + "\n"


def abc_body(tokens: list[str], meter: str, typeset: bool = False) -> str:
    """Body tokens as ABC: notes of one beat beamed together, bars spaced, a few bars a line."""
    compound = meter in COMPOUND_METERS
    beat = Fraction(3) if compound else Fraction(2)  # in eighths: a dotted quarter or a quarter
    out: list[str] = []
    position = Fraction(0)  # in eighths since the last bar line
    tuplet_left, tuplet_scale = 0, Fraction(1)
    bars_on_line = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in BAR_TOKENS:
            if token == ":|" and i + 1 < len(tokens) and tokens[i + 1] in ("|1", "|2"):
                token = ":|" + tokens[i + 1][1]
                i += 1
            bars_on_line += 1
            out.append(f" {token}")
            position = Fraction(0)
            if bars_on_line >= BARS_PER_LINE and i + 1 < len(tokens):
                out.append("\n")
                bars_on_line = 0
            else:
                out.append(" ")
            i += 1
            continue
        if token in TUPLET_TOKENS:
            p = TUPLET_NOTES[token]
            tuplet_left, tuplet_scale = p, tuplet_ratio(p, compound)
            out.append(token)
            i += 1
            continue
        # a note, rest or chord with its duration and broken-rhythm tokens
        start = i
        if token == "[":
            while i < len(tokens) and tokens[i] != "]":
                i += 1
        i += 1
        length = Fraction(1)
        head = "".join(tokens[start:i])
        text = head
        if i < len(tokens) and tokens[i] in DURATIONS:
            length = DURATIONS[tokens[i]]
            text = head + tokens[i]
            if typeset and tokens[i] in TIED_LENGTHS and not (i + 1 < len(tokens) and tokens[i + 1] in BROKEN_TOKENS):
                first, second = TIED_LENGTHS[tokens[i]]
                tie = "" if head == "z" else "-"  # rests are not tied, just written twice
                text = f"{head}{first}{tie}{head}{second}"
            i += 1
        broken = i < len(tokens) and tokens[i] in BROKEN_TOKENS
        if broken:
            # a broken pair keeps its total, so the beat position after the pair is the written one
            length = BROKEN_RHYTHMS[tokens[i]].fused or length
            text += BROKEN_ABC[tokens[i]]
            i += 1
        out.append(text)
        if tuplet_left:
            length *= tuplet_scale
            tuplet_left -= 1
        position += length
        if not broken and tuplet_left == 0 and position % beat == 0:
            out.append(" ")
    return "".join(out).strip().replace("  ", " ").replace(" \n", "\n").replace("\n ", "\n")
