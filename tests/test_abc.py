"""The pure ABC functions: headers, cleaning, bars, durations, transposition, round trip."""

from __future__ import annotations

import glob
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from folkrnn.schemas.vocab import BROKEN_TOKENS, DURATIONS, PITCH_TOKENS, TOKEN_TO_ID
from folkrnn.transforms.abc.errors import TuneRejected
from folkrnn.transforms.abc.header import Key, parse_key, parse_meter
from folkrnn.transforms.abc.split import read_folkrnn_text, split_abc, write_folkrnn_text
from folkrnn.transforms.abc.tokenize import detokenize, tokenize_tune


def tune(body: str, key: str = "C", meter: str = "4/4", length: str = "1/8", extra: str = "") -> str:
    return f"X:1\nT:Test\nM:{meter}\nL:{length}\n{extra}K:{key}\n{body}\n"


def body_tokens(text: str) -> list[str]:
    return tokenize_tune(text).tokens[2:]


# -- header fields ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("G", ("G", "maj")), ("Gm", ("G", "min")), ("G minor", ("G", "min")), ("Ador", ("A", "dor")),
    ("A Dorian", ("A", "dor")), ("D mix", ("D", "mix")), ("Eaeo", ("E", "min")), ("Bb", ("Bb", "maj")),
    ("F#m", ("F#", "min")), ("C clef=treble", ("C", "maj")), ("G treble", ("G", "maj")), ("Dion", ("D", "maj")),
])
def test_parse_key(value, expected):
    key = parse_key(value)
    assert str(key) == "".join(expected)


@pytest.mark.parametrize("value, reason", [
    ("none", "key_not_in_vocab"), ("D lyd", "mode_not_in_vocab"), ("E phrygian", "mode_not_in_vocab"),
    ("Bloc", "mode_not_in_vocab"), ("D ^f", "key_not_in_vocab"), ("HP", "key_not_in_vocab"),
    ("D exp _b", "key_not_in_vocab"),
])
def test_keys_out_of_vocabulary(value, reason):
    with pytest.raises(TuneRejected) as err:
        parse_key(value)
    assert err.value.reason == reason


def test_key_signatures():
    assert Key(4, 0, "maj").signature() == (0, 0, 0, 1, 0, 0, 0)  # G: F#
    assert Key(0, 0, "min").signature() == (0, 0, -1, 0, 0, -1, -1)  # C minor: Bb Eb Ab
    assert Key(1, 0, "dor").signature() == (0, 0, 0, 0, 0, 0, 0)  # D dorian: none


@pytest.mark.parametrize("value, token, mapped", [
    ("C", "4/4", False), ("C|", "4/4", True), ("2/2", "4/4", True), ("6/8", "6/8", False), ("3/2", "3/2", False),
])
def test_parse_meter(value, token, mapped):
    meter = parse_meter(value)
    assert (meter.token_meter, meter.mapped) == (token, mapped)


@pytest.mark.parametrize("value", ["3/8", "5/4", "none", "7/8"])
def test_meters_out_of_vocabulary(value):
    with pytest.raises(TuneRejected) as err:
        parse_meter(value)
    assert err.value.reason == "meter_not_in_vocab"


# -- cleaning -------------------------------------------------------------------------------

def test_cleaning_removes_and_counts_what_the_vocabulary_cannot_say():
    text = tune('"G"~G2 !trill!A {ga}B .c | (dB) TA-A % a comment\nw: some lyrics\nHc uB vA |]')
    result = tokenize_tune(text)
    assert result.tokens[2:] == ["G", "2", "A", "B", "c", "|", "d", "B", "A", "A", "c", "B", "A", "|"]
    removed = result.removed
    assert removed["chord_symbols"] == 1 and removed["grace_notes"] == 1 and removed["comments"] == 1
    assert removed["lyrics"] == 1 and removed["ties"] == 1 and removed["slurs"] == 2
    assert removed["decorations"] == 7  # ~ !trill! . T H u v


def test_tuplets_survive_slur_removal():
    assert body_tokens(tune("(3ABc (ABc) d2|")) == ["(3", "A", "B", "c", "A", "B", "c", "d", "2", "|"]


def test_stray_html_is_removed():
    assert body_tokens(tune("ABc d&gt;e<br>|")) == ["A", "B", "c", "d", ">", "e", "|"]
    # any entity html.unescape knows, numeric ones too; &nbsp; separates like a space
    assert body_tokens(tune("A&#62;B&nbsp;c&#x3E;d|")) == ["A", ">", "B", "c", ">", "d", "|"]


@pytest.mark.parametrize("written, tokens", [
    ("A|B||c|]d[|e", ["A", "|", "B", "|", "c", "|", "d", "|", "e"]),
    ("|:A:|B", ["|:", "A", ":|", "B"]),
    ("A::B", ["A", ":|", "|:", "B"]),
    ("A:||:B", ["A", ":|", "|:", "B"]),
    ("A|1B:|2c|]", ["A", "|1", "B", ":|", "|2", "c", "|"]),
    ("A[1B:|[2c", ["A", "|1", "B", ":|", "|2", "c"]),
    ("A| [1 B :| [2 c", ["A", "|1", "B", ":|", "|2", "c"]),
    ("A|[1B:|[2c", ["A", "|1", "B", ":|", "|2", "c"]),
    ("A||\n|:B", ["A", "|:", "B"]),
    ("|A|", ["A", "|"]),
])
def test_bar_lines_normalise_to_the_five_bar_tokens(written, tokens):
    assert body_tokens(tune(written)) == tokens


@pytest.mark.parametrize("body, tokens", [
    # the Essen phrase-per-line layout: a line ending on a full bar ends that bar ...
    ("c2B2A2B2\nc2A2B2G2", "c 2 B 2 A 2 B 2 | c 2 A 2 B 2 G 2"),
    # ... and a line ending mid-bar (the next phrase starts with its pickup) does not
    ("GG | c4B2\nAB | c8", "G G | c 4 B 2 A B | c 8"),
    ("(3cBA G2 E4\nC8", "(3 c B A G 2 E 4 | C 8"),  # a tuplet counts its real length
    ("c2B2A2B2\n|: c8 :|", "c 2 B 2 A 2 B 2 |: c 8 :|"),  # a bar line written next line stands
    ("C8 | c2B2A2B2", "C 8 | c 2 B 2 A 2 B 2"),  # the last line's end adds nothing
])
def test_a_line_break_that_closes_a_full_bar_is_a_bar_line(body, tokens):
    assert " ".join(body_tokens(tune(body))) == tokens


def test_line_breaks_read_as_bar_lines_are_counted():
    assert tokenize_tune(tune("c2B2A2B2\nc2A2B2G2\nC8")).removed["line_breaks_read_as_bar_lines"] == 2


def test_endings_beyond_two_are_rejected():
    with pytest.raises(TuneRejected) as err:
        tokenize_tune(tune("A|1B:|2c:|3d|]"))
    assert err.value.reason == "ending_not_in_vocab"


@pytest.mark.parametrize("body, reason", [
    ("[V:1]ABc|", "voices"),
    ("ABc|\nM:3/4\nABc|", "meter_change"),
    ("ABc|[K:D]ABc", "key_change"),
    ("ABc|Z2|", "multibar_rest"),
    ("A32B|", "duration_not_in_vocab"),
    ("A>>>B|", "broken_rhythm_not_in_vocab"),
    ("(8ABCDEFGA|", "tuplet_not_in_vocab"),
    ("(3:4:3ABc|", "tuplet_not_in_vocab"),
    ('"unclosed ABc|', "unparseable"),
    ("% only a comment", "empty_body"),
])
def test_rejects_say_why(body, reason):
    with pytest.raises(TuneRejected) as err:
        tokenize_tune(tune(body))
    assert err.value.reason == reason
    assert err.value.detail


def test_same_meter_or_key_repeated_mid_tune_is_fine():
    assert body_tokens(tune("AB|\nM:4/4\nK:C\ncd|")) == ["A", "B", "|", "c", "d", "|"]


def test_missing_fields_are_rejected():
    with pytest.raises(TuneRejected) as err:
        tokenize_tune("X:1\nT:t\nK:G\nABc|")
    assert err.value.reason == "missing_meter"
    with pytest.raises(TuneRejected) as err:
        tokenize_tune("X:1\nT:t\nM:4/4\nABc|")
    assert err.value.reason == "missing_key"


# -- durations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length, body, tokens", [
    ("1/8", "A2 B/ c/2 d// e3/ f3/2 g4", ["A", "2", "B", "/2", "c", "/2", "d", "/4", "e", "3/2", "f", "3/2",
                                          "g", "4"]),
    ("1/16", "A2 B c4 d3 e6", ["A", "B", "/2", "c", "2", "d", "3/2", "e", "3"]),
    ("1/4", "A B/ c3/2", ["A", "2", "B", "c", "3"]),
])
def test_lengths_convert_to_eighths(length, body, tokens):
    assert body_tokens(tune(body, length=length)) == tokens


def test_default_unit_length_follows_the_meter():
    # ABC 2.1: below 3/4 the default unit is 1/16
    assert body_tokens("X:1\nM:2/4\nK:C\nA2B2|") == ["A", "B", "|"]
    assert body_tokens("X:1\nM:6/8\nK:C\nA2B|") == ["A", "2", "B", "|"]


def test_unit_length_may_change_mid_tune():
    assert body_tokens(tune("A2B|\nL:1/16\nA2B|")) == ["A", "2", "B", "|", "A", "B", "/2", "|"]


@pytest.mark.parametrize("body, tokens", [
    ("A>B", ["A", ">", "B"]), ("A<B", ["A", "<", "B"]), ("A>>B", ["A", "2>", "B"]), ("A<<B", ["A", "2<", "B"]),
    ("A/>B", ["A", "/2>", "B"]), ("A/2<B", ["A", "/2<", "B"]), ("A4>B", ["A", "4>", "B"]),
    ("A2>B2", ["A", "2", ">", "B", "2"]), ("A4<B", ["A", "4", "<", "B"]),
])
def test_broken_rhythms(body, tokens):
    assert body_tokens(tune(body)) == tokens


def test_chords_carry_one_duration():
    assert body_tokens(tune("[CEG]2 [C2E2] [ce]/")) == ["[", "C", "E", "G", "]", "2", "[", "C", "E", "]", "2",
                                                       "[", "c", "e", "]", "/2"]


# -- transposition -------------------------------------------------------------------------------

def test_transposes_to_c_keeping_written_structure():
    result = tokenize_tune(tune("DEF^G|=F^FAd|", key="D"))
    assert result.transpose == -2
    assert result.tokens == ["M:4/4", "K:Cmaj", "C", "D", "E", "^F", "|", "_E", "=E", "G", "c", "|"]


def test_minor_and_modal_keys_keep_their_mode():
    assert tokenize_tune(tune("EGBe", key="Em")).tokens[:3] == ["M:4/4", "K:Cmin", "C"]
    assert tokenize_tune(tune("ABcd", key="Ador")).tokens[:3] == ["M:4/4", "K:Cdor", "c"]  # up 3, not down 9
    assert tokenize_tune(tune("DEFG", key="Dmix")).tokens[:3] == ["M:4/4", "K:Cmix", "C"]


def test_shift_direction_keeps_pitches_in_range():
    # A tune in B that climbs high: down by 11 keeps it in range, up by 1 would leave the vocabulary.
    high = tokenize_tune(tune("Bbc'd'e'f'g'b'", key="B"))
    assert high.transpose == -11
    low = tokenize_tune(tune("B,,C,D,", key="B"))
    assert low.transpose == 1


def test_no_shift_fits():
    with pytest.raises(TuneRejected) as err:
        tokenize_tune(tune("C,,c''", key="C"))
    assert err.value.reason == "pitch_not_in_vocab"


PITCH_RE = re.compile(r"(\^\^|\^|__|_|=)?[A-Ga-g][,']*")
LETTER = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def sounding_pitches(tokens: list[str], signature: dict[str, int]) -> list[int]:
    """MIDI pitches of a token sequence, written independently of the code under test.

    The key signature maps a letter to its alteration; an accidental holds for the same letter and
    octave until the next bar line (ABC 2.1).
    """
    pitches, bar_accidentals = [], {}
    for token in tokens:
        if token in ("|", "|:", ":|", "|1", "|2"):
            bar_accidentals = {}
            continue
        if not PITCH_RE.fullmatch(token):
            continue
        accidental = {"^^": 2, "__": -2}.get(token[:2], {"^": 1, "_": -1, "=": 0}.get(token[0]))
        name = token.lstrip("^_=")
        letter = name[0]
        octave = (4 if letter.isupper() else 5) + name.count("'") - name.count(",")
        key = (letter.upper(), octave)
        if accidental is not None:
            bar_accidentals[key] = accidental
        alteration = bar_accidentals.get(key, signature.get(letter.upper(), 0))
        pitches.append(12 * (octave + 1) + LETTER[letter.upper()] + alteration)
    return pitches


def key_signature(key: Key) -> dict[str, int]:
    return dict(zip("CDEFGAB", key.signature()))


def music21_abc_files() -> list[str]:
    from music21 import corpus

    paths = sorted(str(p) for p in corpus.getCorePaths(fileExtensions=["abc"]))
    return [p for p in paths if any(c in p for c in ("oneills1850", "ryansMammoth", "airdsAirs"))]


def real_tunes(limit: int) -> list[str]:
    from folkrnn.transforms.records import decode_text

    found: list[str] = []
    for path in music21_abc_files():
        with open(path, "rb") as handle:
            found.extend(split_abc(decode_text(handle.read())[0]))
    return found[::max(1, len(found) // limit)][:limit]


def test_transposition_preserves_every_interval_on_real_tunes():
    """Hundreds of real tunes: every note moves by exactly the transposition."""
    from folkrnn.transforms.abc.tokenize import split_header

    checked = 0
    for text in real_tunes(400):
        try:
            result = tokenize_tune(text)
        except TuneRejected:
            continue
        key = parse_key(split_header(text).fields["K"])
        original = tokenize_tune_untransposed(text)
        before = sounding_pitches(original, key_signature(key))
        after = sounding_pitches(result.tokens, key_signature(Key(0, 0, result.mode)))
        assert len(before) == len(after) > 0
        assert {b - a for a, b in zip(before, after)} == {result.transpose}, text[:80]
        checked += 1
    assert checked >= 300


def tokenize_tune_untransposed(text: str) -> list[str]:
    """The tune's notes spelled in its own key (shift 0), using the lexer's elements."""
    from folkrnn.schemas.music import LETTERS, pitch_text
    from folkrnn.transforms.abc.lexer import Chord, Note, lex_body
    from folkrnn.transforms.abc.tokenize import Bar, split_header

    header = split_header(text)
    meter = parse_meter(header.fields["M"])
    from folkrnn.transforms.abc.header import default_unit_length, parse_unit_length

    unit = parse_unit_length(header.fields["L"]) if "L" in header.fields else default_unit_length(meter)
    body = lex_body(header.body, unit, meter.token_meter, header.fields["K"])
    out = []
    for element in body.elements:
        notes = element.notes if isinstance(element, Chord) else [element] if isinstance(element, Note) else []
        for note in notes:
            out.append(pitch_text(note.accidental, LETTERS[note.letter], note.octave - 4))
        if isinstance(element, Bar):
            out.append(element.token)
    return out


# -- round trip -----------------------------------------------------------------------------

NOTE_PITCHES = sorted(PITCH_TOKENS)
PLAIN_DURATIONS = sorted(d for d in DURATIONS)


@st.composite
def token_sequences(draw) -> list[str]:
    """Canonical v2 token sequences: what the tokenizer itself writes."""
    meter = draw(st.sampled_from(["2/4", "3/4", "4/4", "6/8", "9/8", "12/8", "3/2"]))
    mode = draw(st.sampled_from(["maj", "min", "dor", "mix"]))
    tokens = [f"M:{meter}", f"K:C{mode}", draw(st.sampled_from(NOTE_PITCHES))]
    after_note = True
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["note", "note", "note", "rest", "chord", "tuplet", "bar", "broken"]))
        if kind in ("note", "rest", "chord"):
            if kind == "note":
                tokens.append(draw(st.sampled_from(NOTE_PITCHES)))
            elif kind == "rest":
                tokens.append("z")
            else:
                tokens += ["[", *draw(st.lists(st.sampled_from(NOTE_PITCHES), min_size=1, max_size=3)), "]"]
            if draw(st.booleans()):
                tokens.append(draw(st.sampled_from(PLAIN_DURATIONS)))
            after_note = True
        elif kind == "broken" and after_note:
            previous = tokens[-1]
            choice = draw(st.sampled_from(sorted(BROKEN_TOKENS)))
            fused = choice in ("/2>", "/2<", "4>")
            if fused and previous in DURATIONS:
                continue  # a fused token carries its own duration
            if previous + choice in BROKEN_TOKENS:
                continue  # the tokenizer fuses these, so they are not canonical
            tokens.append(choice)
            tokens.append(draw(st.sampled_from(NOTE_PITCHES)))
            after_note = True
        elif kind == "tuplet":
            p = draw(st.sampled_from([2, 3, 4, 5, 6, 7, 9]))
            tokens.append(f"({p}")
            tokens += [draw(st.sampled_from(NOTE_PITCHES)) for _ in range(p)]
            after_note = True
        elif kind == "bar" and after_note:
            bar = draw(st.sampled_from(["|", "|", "|:", ":|", "|1", "|2"]))
            tokens.append(bar)
            after_note = False
    return tokens


@settings(max_examples=300, deadline=None)
@given(token_sequences())
def test_tokens_to_abc_to_tokens_is_the_identity(tokens):
    abc = detokenize(tokens, number=5, title="Round trip")
    assert tokenize_tune(abc).tokens == tokens


def test_round_trip_on_the_real_corpus():
    checked = 0
    for text in real_tunes(600):
        try:
            tokens = tokenize_tune(text).tokens
        except TuneRejected:
            continue
        assert tokenize_tune(detokenize(tokens)).tokens == tokens
        checked += 1
    assert checked >= 500


def test_detokenized_abc_has_the_standard_header():
    abc = detokenize(["M:6/8", "K:Cdor", "G", "c", "d", "e", "2", "c", "|"], number=488, title="The Mainframe March")
    assert abc.splitlines()[:5] == ["X:488", "T:The Mainframe March", "M:6/8", "L:1/8", "K:Cdor"]
    assert "Gcd e2c |" in abc  # beamed by beat


# -- splitting files -----------------------------------------------------------------------------

def test_split_inherits_file_header_and_finds_tunes_without_x():
    text = "%abc-2.1\nL:1/16\nR:reel\n\nX:1\nT:One\nM:4/4\nK:G\nA2B2|\n\nfree text\n\nT:Two\nM:2/4\nK:D\nAB|\n"
    tunes = split_abc(text)
    assert len(tunes) == 2
    assert tunes[0].splitlines()[:3] == ["X:1", "L:1/16", "R:reel"]
    assert tokenize_tune(tunes[0]).tokens[2:] == ["d", "e", "|"]  # L:1/16 inherited; G up to c
    assert tunes[1].startswith("L:1/16")


def test_split_at_x_without_blank_lines():
    tunes = split_abc("X:1\nM:4/4\nK:C\nABc|\nX:2\nM:4/4\nK:C\ncBA|\n")
    assert [tokenize_tune(t).tokens[2] for t in tunes] == ["A", "c"]


def test_folkrnn_text_layout_round_trip():
    tunes = [["M:6/8", "K:Cmaj", "|:", "G", "c", "2", ":|"], ["M:4/4", "K:Cdor", "c", "4", "|"]]
    text = write_folkrnn_text(tunes)
    assert text.startswith("M:6/8\nK:Cmaj\n|: G c 2 :|\n\nM:4/4")
    assert read_folkrnn_text(text) == tunes


# -- robustness on files with voices, decorations and odd headers --------------------------------

def debian_example_files() -> list[str]:
    found = []
    for folder in ("/usr/share/doc/abcm2ps", "/usr/share/doc/abcmidi"):
        found += glob.glob(os.path.join(folder, "**", "*.abc"), recursive=True)
    return sorted(found)


def test_nothing_crashes_on_debian_example_files():
    from folkrnn.transforms.ingest import process_record
    from folkrnn.transforms.records import RawTune, decode_text

    files = debian_example_files()
    assert files, "abcm2ps/abcmidi examples missing: run `make setup` (installs the Debian packages)"
    outcomes = []
    for path in files:
        with open(path, "rb") as handle:
            text, encoding = decode_text(handle.read())
        for position, tune_text in enumerate(split_abc(text)):
            kind, row = process_record(RawTune(path, "examples", position, tune_text, encoding))
            if kind == "reject":
                assert row["reason"] != "internal_error", row["detail"]
                assert row["detail"]
            outcomes.append(kind)
    assert outcomes


def test_every_kept_token_is_in_the_vocabulary():
    for text in real_tunes(300):
        try:
            tokens = tokenize_tune(text).tokens
        except TuneRejected:
            continue
        assert all(t in TOKEN_TO_ID for t in tokens)


def test_invisible_bar_lines_are_dropped():
    assert body_tokens(tune("AB[|]:|cd|")) == ["A", "B", ":|", "c", "d", "|"]


def test_typeset_form_ties_lengths_engravers_cannot_draw():
    tokens = ["M:4/4", "K:Cmaj", "c", "5", "d", "3", "|", "[", "C", "E", "]", "9", "z", "5/2", "A", "/2", "|"]
    body = detokenize(tokens, typeset=True).splitlines()[-1]
    assert "c4-cd3" in body and "[CE]8-[CE]" in body and "z2z/2" in body
    assert tokenize_tune(detokenize(tokens)).tokens == tokens  # the plain form still reads back
