"""The music of the vocabulary (schemas/music.py), tested once; and that its users read it alike."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import pytest

from folkrnn.schemas import music
from folkrnn.schemas.music import (
    BAR_EIGHTHS,
    BAR_TICKS,
    BROKEN_RHYTHMS,
    DURATION_TICKS,
    KINDS,
    PITCH_HEIGHT,
    TICKS_PER_UNIT,
    TOKEN_KIND,
    TONIC_TOKENS,
    by_id,
    fused_broken_token,
    parse_pitch,
    pitch_height,
    pitch_text,
    sounding_pitch,
    tuplet_q,
    tuplet_ratio,
)
from folkrnn.schemas.vocab import DURATIONS, PITCH_TOKENS, TOKEN_TO_ID, TOKENS, TUPLET_TOKENS, token_class

U = TICKS_PER_UNIT


# --- Token kinds ---------------------------------------------------------------------------------
def test_every_token_has_exactly_one_kind():
    assert set(TOKEN_KIND) == set(TOKENS) and len(TOKEN_KIND) == len(TOKENS) == 137
    members = {kind: {t for t, k in TOKEN_KIND.items() if k == kind} for kind in KINDS}
    assert sum(len(m) for m in members.values()) == 137 and all(members.values())
    assert members["start"] == {"<s>"} and members["end"] == {"</s>"}
    assert members["chord_open"] == {"["} and members["chord_close"] == {"]"} and members["rest"] == {"z"}


def test_kinds_refine_the_vocabulary_classes():
    split = {"start": "special", "end": "special", "chord_open": "chord", "chord_close": "chord"}
    for token, kind in TOKEN_KIND.items():
        assert token_class(token) == split.get(kind, kind), token
    assert music.ELEMENT_STARTS == PITCH_TOKENS | {"z", "["}


def test_tables_by_token_id_line_up_with_the_vocabulary():
    heights = by_id(PITCH_HEIGHT, None)
    assert len(heights) == 137
    assert heights[TOKEN_TO_ID["c"]] == 12 and heights[TOKEN_TO_ID["|"]] is None
    assert by_id(TOKEN_KIND, "?")[TOKEN_TO_ID["<s>"]] == "start"


# --- Durations -----------------------------------------------------------------------------------
def test_durations_in_ticks_are_exact():
    assert len(DURATION_TICKS) == 18
    assert DURATION_TICKS["/8"] == U // 8 and DURATION_TICKS["/3"] == U // 3
    assert DURATION_TICKS["3/2"] == 3 * U // 2 and DURATION_TICKS["16"] == 16 * U
    for token, ticks in DURATION_TICKS.items():
        assert isinstance(ticks, int) and music.eighths(ticks) == DURATIONS[token]


def test_the_tick_divides_every_length_of_the_vocabulary():
    for p in range(2, 10):
        for compound in (False, True):
            assert (U * tuplet_ratio(p, compound)).denominator == 1
    for rule in BROKEN_RHYTHMS.values():
        for factor in (rule.first, rule.second):
            assert (U * factor * (rule.fused or 1)).denominator == 1


# --- Broken rhythms ------------------------------------------------------------------------------
@pytest.mark.parametrize("token, first, second", [
    (">", Fraction(3, 2), Fraction(1, 2)),
    ("<", Fraction(1, 2), Fraction(3, 2)),
    ("2>", Fraction(7, 4), Fraction(1, 4)),
    ("2<", Fraction(1, 4), Fraction(7, 4)),
    ("/2>", Fraction(3, 4), Fraction(1, 2)),  # fused: the first note is /2, then dotted
    ("/2<", Fraction(1, 4), Fraction(3, 2)),
    ("4>", Fraction(6), Fraction(1, 2)),  # fused: the first note is 4, then dotted
])
def test_broken_rhythms_scale_two_unit_notes(token, first, second):
    rule = BROKEN_RHYTHMS[token]
    assert ((rule.fused or 1) * rule.first, rule.second) == (first, second)


def test_only_fused_tokens_fuse_a_duration():
    assert fused_broken_token("/2", ">") == "/2>" and fused_broken_token("/2", "<") == "/2<"
    assert fused_broken_token("4", ">") == "4>"
    assert fused_broken_token("4", "<") is None  # no such token
    assert fused_broken_token("2", ">") is None  # 2> is the double broken rhythm >>, not 2 then >
    assert fused_broken_token("c", ">") is None


# --- Tuplets and bars per meter ------------------------------------------------------------------
SIMPLE_Q = {2: 3, 3: 2, 4: 3, 5: 2, 6: 2, 7: 2, 8: 3, 9: 2}
COMPOUND_Q = {**SIMPLE_Q, 5: 3, 7: 3, 9: 3}


@pytest.mark.parametrize("p", range(2, 10))
def test_tuplet_ratio_per_meter(p):
    assert tuplet_q(p, False) == SIMPLE_Q[p] and tuplet_q(p, True) == COMPOUND_Q[p]
    assert tuplet_ratio(p, True) == Fraction(COMPOUND_Q[p], p)
    assert music.COMPOUND_METERS == {"6/8", "9/8", "12/8"}


def test_tuplet_tokens_say_their_note_count():
    assert music.TUPLET_NOTES == {t: int(t[1:]) for t in TUPLET_TOKENS}
    assert sorted(music.TUPLET_NOTES.values()) == [2, 3, 4, 5, 6, 7, 9]


def test_bar_lengths_per_meter():
    assert BAR_EIGHTHS == {"2/4": 4, "3/4": 6, "4/4": 8, "6/8": 6, "9/8": 9, "12/8": 12, "3/2": 12}
    assert BAR_TICKS == {m: int(n) * U for m, n in BAR_EIGHTHS.items()}
    assert music.bar_eighths("6/8") == 6 and music.bar_eighths(None) is None and music.bar_eighths("5/4") is None


# --- Pitch ---------------------------------------------------------------------------------------
def test_pitch_heights():
    heights = {"C": 0, "c": 12, "^F,": -6, "_B": 10, "c'": 24, "=C,": -12, "B,": -1, "^c'": 25, "b'": 35}
    assert {t: pitch_height(t) for t in heights} == heights
    assert pitch_height("|") is None and pitch_height("z") is None
    assert set(PITCH_HEIGHT) == PITCH_TOKENS
    assert min(PITCH_HEIGHT.values()) == -12 and max(PITCH_HEIGHT.values()) == 35


def test_tonic_tokens_are_the_unmarked_and_natural_cs():
    assert TONIC_TOKENS == {"C,", "C", "c", "c'", "=C,", "=C", "=c", "=c'"}


def test_pitch_spelling_round_trips():
    for token in PITCH_TOKENS:
        assert pitch_text(*parse_pitch(token)) == token
    assert parse_pitch("^^f''") == (2, "F", 3) and parse_pitch("__B,,") == (-2, "B", -2)
    assert pitch_text(-2, "B", -2) == "__B,,"


def test_sounding_pitch_reads_unmarked_letters_by_the_signature():
    assert sounding_pitch("B") is None  # B flat in Cmin/Cdor/Cmix, B in Cmaj: unknown alone
    assert sounding_pitch("B", {}) == 11 and sounding_pitch("B", {"B": -1}) == 10
    assert sounding_pitch("=B", {"B": -1}) == 11 and sounding_pitch("_c") == 11
    assert sounding_pitch("|", {}) is None


def test_mode_scales_give_the_key_signatures_of_c():
    from folkrnn.transforms.abc.header import Key

    signatures = {mode: Key(0, 0, mode).signature() for mode in music.MODE_SCALES}
    assert signatures == {"maj": (0,) * 7, "min": (0, 0, -1, 0, 0, -1, -1), "dor": (0, 0, -1, 0, 0, 0, -1),
                          "mix": (0, 0, 0, 0, 0, 0, -1)}


# --- Its users read it alike ---------------------------------------------------------------------
def test_lexer_tokenizer_validator_and_timeline_agree_on_a_tuplet_per_meter():
    """(5 is five in the time of three in compound meters, of two in simple ones: the lexer
    accepts the explicit ratio only where it is the default, the validator and the analysis
    timeline measure the bar by the same rule."""
    from folkrnn.model.analysis.timing import timeline
    from folkrnn.transforms.abc.errors import TuneRejected
    from folkrnn.transforms.abc.tokenize import tokenize_tune
    from folkrnn.transforms.validator import bar_lengths

    for meter, q in (("6/8", 3), ("2/4", 2)):
        rest = BAR_EIGHTHS[meter] - q
        abc = f"X:1\nM:{meter}\nL:1/8\nK:C\n(5:{q}cdefg c{rest}|\n"
        tokens = tokenize_tune(abc).tokens
        assert tokens[2:] == ["(5", "c", "d", "e", "f", "g", "c", str(rest), "|"]
        assert bar_lengths(tokens) == [BAR_EIGHTHS[meter]]
        line = timeline(tokens)
        assert line.position[tokens.index("|")] == BAR_EIGHTHS[meter]
        with pytest.raises(TuneRejected, match="ratio"):
            tokenize_tune(abc.replace(f"(5:{q}", f"(5:{5 - q}"))


@pytest.mark.parametrize("token", sorted(DURATIONS))
def test_the_validator_measures_durations_by_the_table(token):
    from folkrnn.transforms.validator import bar_lengths

    assert bar_lengths(["M:4/4", "K:Cmaj", "c", token, "|"]) == [DURATIONS[token]]


@pytest.mark.parametrize("token", sorted(BROKEN_RHYTHMS))
def test_the_validator_measures_broken_rhythms_by_the_table(token):
    from folkrnn.transforms.validator import bar_lengths

    rule = BROKEN_RHYTHMS[token]
    assert bar_lengths(["M:4/4", "K:Cmaj", "c", token, "d", "|"]) == [(rule.fused or 1) * rule.first + rule.second]


def test_the_pure_validator_does_not_import_beam():
    code = ("import sys\n"
            "from folkrnn.transforms.validator import validate_tokens, summarize, bar_lengths, meter_and_mode\n"
            "from folkrnn.model.analysis.timing import timeline\n"
            "assert validate_tokens('M:4/4 K:Cmaj c 8 |'.split()).valid\n"
            "assert 'apache_beam' not in sys.modules, 'the pure validator imported Beam'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0, result.stderr
