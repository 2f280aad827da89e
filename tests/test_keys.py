"""Books in keys people play: ``folkrnn compile --key session|C|TONIC`` (issue 16, section 2).

The transposed ABC is read back by readers that share no code with ``transforms/abc/keys.py``:
music21's ABC parser (the written text, key signature and bar accidentals included) and a small
token reader below that takes its key signatures from music21. Every sounding pitch must move by
one interval, under both octave rules readers use for bar accidentals.
"""

from __future__ import annotations

import functools
import json
import random
import re

import pyarrow.dataset as ds
import pytest

from folkrnn.pipeline import cli
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.tables import CORPUS
from folkrnn.schemas.vocab import MODES, PITCH_TOKENS
from folkrnn.transforms.abc.keys import (
    HOME_RANGE,
    PLAYING_RANGE,
    SESSION_TONICS,
    check_key_choice,
    choose_placement,
    forced_key,
    in_key,
    key_name,
    printed_key,
    sounding_heights,
)
from folkrnn.transforms.abc.tokenize import detokenize
from folkrnn.transforms.abc.volume import book_tune, plain_text, problems_text, tune_abc
from folkrnn.transforms.tune_types import classify
from tests.test_books import run_compile, write_dataset

TONICS = [letter + accidental for letter in "CDEFGAB" for accidental in ("", "#", "b")]
M21_MODES = {"maj": "major", "min": "minor", "dor": "dorian", "mix": "mixolydian"}
NOTE_RE = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)")
BARS = ("|", "|:", ":|", "|1", "|2")


# --- tunes like the model's: all four modes, accidentals that carry, naturals, octaves, chords ----
def random_tune(rng: random.Random, mode: str, chords: bool = True) -> list[str]:
    """A tune in ``K:C<mode>``: each bar keeps to three letters over three octaves, so accidentals
    carry to later notes of the same letter and octave, and meet the same letter an octave away."""
    tokens = [rng.choice(["M:4/4", "M:6/8", "M:3/4"]), f"K:C{mode}"]
    for _ in range(rng.randint(4, 10)):
        letters = rng.sample("CDEFGAB", 3)
        for _ in range(rng.randint(3, 8)):
            kind = rng.random()
            if kind < 0.08 and chords:
                tokens += ["[", pitch(rng, letters), pitch(rng, letters), "]"]
            elif kind < 0.12:
                tokens += ["(3", pitch(rng, letters), pitch(rng, letters), pitch(rng, letters)]
            else:
                tokens.append(pitch(rng, letters))
            if rng.random() < 0.2:
                tokens.append(rng.choice(["2", "/2", "3", "5", "4"]))
        tokens.append(rng.choice(BARS[:1] * 4 + BARS[1:]))
    return tokens


def pitch(rng: random.Random, letters: list[str]) -> str:
    letter = rng.choice(letters)
    text = rng.choice([letter + ",", letter, letter.lower(), letter.lower() + "'"])
    accidental = rng.choice(["", "", "", "^", "_", "="])
    return accidental + text if accidental + text in PITCH_TOKENS else text if text in PITCH_TOKENS else "C"


def tunes(count: int, seed: int = 16, chords: bool = True) -> list[list[str]]:
    rng = random.Random(seed)
    return [random_tune(rng, MODES[i % 4], chords) for i in range(count)]


# --- independent readers -------------------------------------------------------------------------
@functools.cache
def m21_signature(key_text: str) -> dict[str, int]:
    """Letter -> alteration of a K: value such as ``F#dor``, from music21's key tables."""
    from music21 import key

    tonic, mode = key_text[:-3].replace("b", "-") or "C", key_text[-3:]
    return {p.step: int(p.alter) for p in key.Key(tonic, M21_MODES[mode]).alteredPitches}


def read_tokens(tokens: list[str], same_octave: bool) -> list[tuple[int, bool, int]]:
    """(MIDI pitch, marked, the pitch it would have unmarked) of each note of printed tokens.

    The first K: token gives the signature; an accidental holds to the next bar line for the same
    letter and octave (``same_octave``) or for the letter in every octave.
    """
    signature = m21_signature(next((t[2:] for t in tokens if t.startswith("K:")), "Cmaj"))
    notes, held = [], {}
    for token in tokens:
        if token in BARS:
            held = {}
        match = NOTE_RE.fullmatch(token)
        if not match:
            continue
        marks, letter, octave_marks = match.groups()
        octave = (5 if letter.islower() else 4) + octave_marks.count("'") - octave_marks.count(",")
        step = letter.upper()
        scope = (step, octave) if same_octave else step
        unmarked = held.get(scope, signature.get(step, 0))
        alteration = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}[marks] if marks else unmarked
        if marks:
            held[scope] = alteration
        natural = 12 * (octave + 1) + "C D EF G A B".index(step)
        notes.append((natural + alteration, bool(marks), natural + unmarked))
    return notes


def m21_pitches(block: str, propagation: str) -> list[int]:
    """MIDI pitches of one ABC tune's notes as music21's ABC reader hears them (``octave``: ABC 2.1's
    bar accidentals, ``pitch``: an accidental holds for its letter in every octave). Its handler
    reads the text, key signature and accidentals; building a score would add only time."""
    from music21 import abcFormat, pitch

    handler = abcFormat.ABCHandler(abcVersion=(2, 1, 0))
    handler.process(f"%abc-2.1\n%%propagate-accidentals {propagation}\n{block}")
    notes = [t for t in handler.tokens if type(t) is abcFormat.ABCNote and not t.isRest]
    return [pitch.Pitch(note.pitchName).midi for note in notes]


def block(tokens: list[str], key: str) -> str:
    return tune_abc({"number": 1, "title": "T", "tokens": tokens}, key)


# --- every sounding pitch moves by one interval ----------------------------------------------------
def test_music21_hears_every_pitch_move_by_one_interval():
    """The written ABC, key signature and bar accidentals, read by music21 under both octave rules.

    music21 neither carries an accidental into a chord nor out of one (ABC 2.1 does both), so these
    tunes have no chords; the token reader below checks chords.
    """
    for i, tokens in enumerate(tunes(84, chords=False)):
        before = m21_pitches(block(tokens, "C"), "octave")
        for choice in ("session", TONICS[i % len(TONICS)]):
            written = block(tokens, choice)
            name = printed_key(tokens, choice)
            assert f"\nK:{name}\n" in written
            # --key C prints the tokens as generated, which only ABC 2.1's octave rule reads right
            for propagation in ("octave", "pitch") if choice != "C" else ("octave",):
                after = m21_pitches(written, propagation)
                moves = {b - a for a, b in zip(before, after)}
                assert len(after) == len(before) > 0 and len(moves) == 1, (choice, propagation, written)
                tonic = m21_signature_tonic(name)
                assert moves.pop() % 12 == tonic, (choice, name)


def m21_signature_tonic(name: str) -> int:
    from music21 import pitch

    return pitch.Pitch(name[:-3].replace("b", "-")).pitchClass


@pytest.mark.parametrize("choice", ["session", *TONICS])
def test_every_key_moves_every_pitch_by_one_interval_and_writes_no_needless_accidental(choice):
    """Many tunes in every key, read by the token reader under both octave rules; an accidental is
    written only where a reader (under one rule or the other) would hear another pitch without it."""
    for tokens in tunes(120):
        printed, name = in_key(tokens, choice)
        assert name == printed_key(tokens, choice)
        if choice == "C":
            assert printed == tokens and name == "C" + tokens[1][3:]
        before = [p for p, _, _ in read_tokens(tokens, same_octave=True)]
        # --key C prints the tokens as generated, which only ABC 2.1's octave rule reads right
        both = [read_tokens(printed, same_octave=rule) for rule in ((True, False) if choice != "C" else (True,))]
        for notes in both:
            moves = {p - b for (p, _, _), b in zip(notes, before)}
            assert len(notes) == len(before) and len(moves) == 1, (choice, printed)
        if choice != "C":
            for (p, marked, plain1), (_, _, plain2) in zip(*both):
                assert not marked or p != plain1 or p != plain2, printed
            assert all(not re.match(r"\^\^|__", t) for t in printed)  # single accidentals only


# --- spelling in the new key ---------------------------------------------------------------------
@pytest.mark.parametrize("c_tune, key, expected", [
    # in D major F# and C# come from the signature; a sounding F natural is =F, a sounding G# is ^G
    ("K:Cmaj C E _e ^F =B B | _e e", "D", "K:Dmaj D F =f ^G c c | =f f"),
    # an accidental lasts to the bar line for its letter and octave: the second note needs no mark
    ("K:Cmaj ^f f | f", "D", "K:Dmaj ^g g | g"),
    # ... and a note of that letter an octave away gets its own mark, so every reader agrees
    ("K:Cmaj ^f f' f", "D", "K:Dmaj ^G =g ^G"),
    # minor: B and E are flat in Cmin; =B carries through the bar; K:Emin writes D natural, D# as ^D
    ("K:Cmin B =B B e | B", "E", "K:Emin d ^d d g | d"),
    # dorian and mixolydian keep their mode
    ("K:Cdor _e e =e c", "A", "K:Ador c c ^c A"),
    ("K:Cmix B =B ^c", "A", "K:Amix G ^G ^A"),
    # flat keys: a sounding B natural in F major is =B, and a B flat after it in the bar is _B
    ("K:Cmaj ^F F =F [ C E G ]", "F", "K:Fmaj =B B _B [ F A c ]"),
    # a white key is written on its own letter, not as E# or B#, unless the signature has it
    ("K:Cmaj ^d ^a d | B", "D", "K:Dmaj =f =c' f | c"),
    ("K:Cmaj B ^F", "F#", "K:F#maj e =c"),
])
def test_spelling_uses_the_keys_letters_and_only_needed_accidentals(c_tune, key, expected):
    printed, name = in_key(c_tune.split(), key)
    assert " ".join(printed) == expected and expected.startswith(f"K:{name} ")


def test_forced_keys_keep_the_mode_and_avoid_double_sharp_and_flat_signatures():
    assert [key_name(forced_key("D", m)) for m in MODES] == ["Dmaj", "Dmin", "Ddor", "Dmix"]
    assert key_name(forced_key("G#", "maj")) == "Abmaj" and key_name(forced_key("G#", "min")) == "G#min"
    assert key_name(forced_key("Fb", "maj")) == "Emaj" and key_name(forced_key("Cb", "maj")) == "Cbmaj"
    assert key_name(forced_key("E#", "dor")) == "Fdor" and key_name(forced_key("Db", "min")) == "C#min"
    assert [key_name(forced_key(t, "maj")) for t in ("C#", "Gb", "Bb")] == ["C#maj", "Gbmaj", "Bbmaj"]


# --- the playing range ---------------------------------------------------------------------------
def place(tokens: str, choice: str = "session"):
    tokens = tokens.split()
    mode = tokens[0][3:]
    return choose_placement(sounding_heights(tokens, mode), choice, mode)


def test_session_keys_in_range_then_at_home_then_smallest_move_first():
    assert (PLAYING_RANGE, HOME_RANGE) == ((62, 95), (62, 83))  # D4-B6 and D4-B5, as documented
    low = place("K:Cmaj C D E G c e g c'")  # C4-C6: D major, up a tone (24 semitones never fit D4-B5)
    assert (low.name, low.semitones) == ("Dmaj", 2)
    common = place("K:Cmaj G A B c d e f g a b c'")  # G4-C6: D major would pass B5; G major down a fourth
    assert (common.name, common.semitones) == ("Gmaj", -5)
    high = place("K:Cmaj g a b c' d' e' f' g' a' b'")  # G5-B6: G major, down an octave and a fourth
    assert (high.name, high.semitones) == ("Gmaj", -17)
    assert (place("K:Cmin c d e g").name, place("K:Cmin c d e g").semitones) == ("Amin", -3)
    assert place("K:Cdor C, D, E,").name == "Edor" and place("K:Cdor C, D, E,").semitones == 16
    assert (place("K:Cmix c").name, place("K:Cmix c").semitones) == ("Dmix", 2)
    assert (place("K:Cmaj").name, place("K:Cmaj").semitones) == ("Dmaj", 2)  # no notes: the first candidate


def test_when_no_candidate_fits_the_fewest_notes_out_win_then_the_fewest_away_from_home():
    # fewer notes out beat a smaller move: three low Cs stay out unless the tune goes up a ninth
    many_low = place("K:Cmaj C, C, C, b'")
    assert (many_low.name, many_low.semitones) == ("Dmaj", 14)
    # C3 and B6 span 47 semitones: every candidate leaves a note out; going up a ninth to D keeps the
    # other one at home, where G down a fourth or D down a seventh leave it above B5
    wide = place("K:Cmaj C, b'")
    assert (wide.name, wide.semitones) == ("Dmaj", 14)
    # a forced key: F# up or down a tritone both keep c-e at home: up before down
    tie = place("K:Cmaj c d e", "F#")
    assert (tie.name, tie.semitones) == ("F#maj", 6)
    assert place("K:Cmaj g' a' b'", "F#").semitones == -18


def test_session_keys_fit_every_tune_spanning_two_octaves_and_a_tone():
    """The candidates of each mode are at most a fifth apart, so a tune spanning up to 26 semitones
    always fits the 33-semitone range."""
    rng = random.Random(5)
    playable = sorted(PITCH_TOKENS)
    for _ in range(400):
        mode = rng.choice(MODES)
        low = rng.randrange(-12, 36 - 26)
        notes = [t for t in playable if low <= sounding_heights([t], mode)[0] <= low + 26]
        tokens = [f"K:C{mode}", *rng.sample(notes, min(12, len(notes)))]
        chosen = choose_placement(sounding_heights(tokens, mode), "session", mode)
        moved = [h + chosen.semitones + 60 for h in sounding_heights(tokens, mode) if h is not None]
        assert all(PLAYING_RANGE[0] <= m <= PLAYING_RANGE[1] for m in moved), tokens
        assert chosen.name[:-3] in SESSION_TONICS[mode]


def test_key_values_are_checked():
    assert [check_key_choice(v) for v in ("session", "C", "d", "Bb", "f#")] == ["session", "C", "D", "Bb", "F#"]
    for bad in ("Dmaj", "H", "", "D##", "sessions"):
        with pytest.raises(UsageError, match="is not a key"):
            check_key_choice(bad)


# --- folkrnn compile --key -----------------------------------------------------------------------
def compiled(tmp_path, data: str, out: str, *argv: str) -> tuple[str, list[dict]]:
    """The volume's ABC text and its corpus rows after ``folkrnn compile DATA --out OUT ARGV``."""
    assert run_compile(data, "--out", str(tmp_path / out), "--quiet", *argv) == 0
    abc = (tmp_path / out / "volumes" / "folkrnn-volume-01.abc").read_text()
    corpus = ds.dataset(str(tmp_path / out / "corpus"), format="parquet", partitioning="hive").to_table()
    assert set(CORPUS.names) <= set(corpus.schema.names)
    return abc, sorted(corpus.to_pylist(), key=lambda r: r["number"])


def test_compile_key_c_is_the_generated_c_byte_for_byte(tmp_path):
    data = write_dataset(str(tmp_path / "generated"), range(1, 41))
    abc, rows = compiled(tmp_path, data, "c", "--key", "C", "--no-pdf")
    # each tune as written before keys existed: detokenize's block of the C tokens, untouched but for
    # what every book adds (type, tempo, marks of a tune the validator failed, a final bar line)
    for r in rows:
        block = detokenize(list(r["tokens"]), number=r["number"], title=plain_text(r["title"]), typeset=True)
        problems = problems_text(r) if r["valid"] is False else None
        assert r["abc"] == book_tune(block, classify(list(r["tokens"])), problems) and r["abc"] in abc
    assert [r["key"] for r in rows] == ["C" + r["mode"] for r in rows]


def test_compile_session_keys_by_default_with_the_key_in_the_corpus(tmp_path, capsys):
    data = write_dataset(str(tmp_path / "generated"), range(1, 41))
    abc, rows = compiled(tmp_path, data, "out", "--no-pdf")
    for row in rows:
        assert row["key"][:-3] in SESSION_TONICS[row["mode"]] and row["key"][-3:] == row["mode"]
        assert f"\nK:{row['key']}\n" in row["abc"] and row["abc"] in abc
        assert row["tokens"][1] == f"K:C{row['mode']}"  # the corpus keeps the tokens as generated
    assert {r["key"] for r in rows} >= {"Dmaj", "Emin"}
    # a changed --key rebuilds the volume; the same one again leaves it be
    capsys.readouterr()
    abc_bb, rows_bb = compiled(tmp_path, data, "out", "--no-pdf", "--key", "Bb")
    assert "0 up to date, 1 to build" in capsys.readouterr().out
    assert {r["key"][:-3] for r in rows_bb} == {"Bb"} and abc_bb != abc
    compiled(tmp_path, data, "out", "--no-pdf", "--key", "bb")
    assert "1 up to date, 0 to build" in capsys.readouterr().out


def test_compile_typesets_session_keys_without_errors(tmp_path):
    """Real abcm2ps on transposed valid tunes: no errors, and the PDF is made."""
    data = write_dataset(str(tmp_path / "generated"), [n for n in range(1, 25) if n % 20 not in (3, 11)])
    compiled(tmp_path, data, "pdf", "--key", "session")
    report = json.loads((tmp_path / "pdf" / "volumes" / "folkrnn-volume-01.report.json").read_text())
    assert report["pages"] >= 1 and report["tunes_with_abcm2ps_errors"] == 0


def test_a_bad_key_is_one_line_and_exit_2(tmp_path, capsys):
    data = write_dataset(str(tmp_path / "generated"), range(1, 5))
    code = cli.main(["compile", data, "--out", str(tmp_path / "out"), "--key", "Dmaj"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("folkrnn compile: error: --key 'Dmaj' is not a key")
    assert not (tmp_path / "out").exists()
