"""The tune validator: durations, bars, pickups, repeats and endings, cadences, header, junk, Beam.

Over 450 lines on purpose: one file of the validator's behaviour, section by section, whose hand-
written tunes (REEL, JIG, WALTZ) the sections share; the tables it applies are tested once in
tests/test_music.py."""

from __future__ import annotations

import re
from fractions import Fraction

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from folkrnn.pipeline.beam.validate import ValidateTunes
from folkrnn.schemas.vocab import METER_TOKENS, MODE_TOKENS, TOKENS
from folkrnn.transforms.validator import (
    BEAM_COLUMNS,
    REASON_CODES,
    REASON_DESCRIPTIONS,
    Findings,
    SummaryTally,
    bar_lengths,
    format_summary,
    summarize,
    validate_tokens,
)
from folkrnn.transforms.validator import check as check_module


def check(text: str, truncated: bool = False) -> Findings:
    return validate_tokens(text.split(), truncated=truncated)


def bar_length(bar: str, meter: str = "4/4") -> float:
    """Length (units of L:1/8) of ``bar`` placed between two full bars, as the validator sees it."""
    full = {"2/4": "c 4", "4/4": "c 8", "6/8": "c 6", "9/8": "c 9", "3/4": "c 6"}[meter]
    findings = check(f"M:{meter} K:Cmaj {full} | {bar} | {full} |")
    other = [r for r in findings.reasons if r not in ("bar_too_short", "bar_too_long")]
    assert not other, findings.problems
    if findings.valid:
        return {"2/4": 4, "4/4": 8, "6/8": 6, "9/8": 9, "3/4": 6}[meter]
    (length,) = findings.bar_lengths_failed
    return length


def codes(findings: Findings) -> list[str]:
    return [p["code"] for p in findings.problems]


# Hand-written tunes in the token format.
REEL = (
    "M:4/4 K:Cmaj |: c 2 e c g c e c | d 2 f d a d f d | c 2 e c g c e c | B G A B c 4 | "
    "c 2 e c g c e c | d 2 f d a d f d | c 2 e c g c e c | B G A B c 4 :| "
    "|: g 2 e g c' g e g | f 2 d f a f d f | g 2 e g c' g e g | f d B d c 4 | "
    "g 2 e g c' g e g | f 2 d f a f d f | g > e g < c' (3 g a g e g | f d B d c 4 :|"
)
# Pickup G; the A part has endings, the first ending's last bar (5) completes the pickup (1);
# the B part has its own pickup g written at the end of the second ending.
JIG = (
    "M:6/8 K:Cmin G |: c 2 d e 2 c | B G G B G G | c 2 d e 2 f | g 3 f 2 e | d 2 c B 2 A | G 2 F E 2 D "
    "|1 C 3 G, 2 A, | C 3 C 2 :| |2 C 3 G, 2 A, | C 3 C 2 g |: c' 2 b g 2 f | e f g c 2 d | e 2 f g 2 f | "
    "e d c B 2 G | c' 2 b g 2 f | e f g c 2 d | e 2 d c B A | [ C c ] 3 c 2 :|"
)
WALTZ = (
    "M:3/4 K:Cmaj c 2 e 2 g 2 | c' 4 b 2 | a 2 g 2 f 2 | e 6 | d 2 f 2 a 2 | g 4 f 2 | e 2 d 2 B 2 | c 6 | "
    "e 2 g 2 c' 2 | e' 4 d' 2 | c' 2 b 2 a 2 | g 6 | f 2 a 2 f 2 | e 2 g 2 e 2 | d 2 B 2 G 2 | c 6 |"
)


# --- Durations ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bar, length",
    [
        ("c d e", 3),  # no duration token: 1 each
        ("c 2 d 3/2 e /2 f /4", 4.25),  # duration tokens multiply the unit
        ("c 3 d 7/2 e 5/2 z 3/4", 9.75),
        ("z 2 c", 3),  # rests have durations too
        ("c 16", 16),
        ("c /8 d /3 e /3 f /3", 1.125),
    ],
)
def test_durations_multiply_the_unit_length(bar: str, length: float) -> None:
    assert bar_length(bar) == length


@pytest.mark.parametrize(
    "bar, length",
    [
        ("c > d", 2),  # 1.5 + 0.5: the pair keeps its total
        ("c 2 > d", 3.5),  # 3 + 0.5: each note scaled by its own duration
        ("c > d 2", 2.5),  # 1.5 + 1
        ("c < d 2", 3.5),  # 0.5 + 3
        ("c 2> d 2", 2.25),  # 1.75 + 0.5
        ("c 2< d 2", 3.75),  # 0.25 + 3.5
        ("c /2> d", 1.25),  # fused: c is /2 (0.75) and d gets half (0.5)
        ("c /2< d", 1.75),  # 0.25 + 1.5
        ("c 4> d", 6.5),  # fused: c is 4 (6) and d gets half (0.5)
        ("c > d > e", 2.75),  # chained: d is halved then dotted (0.75)
    ],
)
def test_broken_rhythms(bar: str, length: float) -> None:
    assert bar_length(bar) == length


def test_broken_pairs_fill_a_bar_exactly() -> None:
    assert check("M:4/4 K:Cmaj c 2 > d 2 e 2 < f 2 | c 8 |").valid
    assert check("M:4/4 K:Cmaj c 2> d c 2< d c 4 | c 8 |").valid


@pytest.mark.parametrize(
    "bar, meter, length",
    [
        ("(2 c d", "4/4", 3),  # 2 in the time of 3
        ("(3 c d e", "4/4", 2),  # 3 in the time of 2
        ("(3 c 2 d 2 e 2", "4/4", 4),  # each note's own duration is scaled
        ("(4 c d e f", "4/4", 3),
        ("(6 c d e f g a", "4/4", 2),  # 6 in the time of 2
        ("(5 c d e f g", "4/4", 2),  # simple meter: 5 in the time of 2
        ("(5 c d e f g", "6/8", 3),  # compound meter: 5 in the time of 3
        ("(7 c d e f g a b", "2/4", 2),
        ("(7 c d e f g a b", "9/8", 3),
        ("(9 c d e f g a b c' d'", "6/8", 3),
        ("(3 c > d e", "4/4", 2),  # a broken pair inside a tuplet
        ("(3 z [ C E ] 2 e", "4/4", 8 / 3),  # rests and chords are tuplet notes
    ],
)
def test_tuplets(bar: str, meter: str, length: float) -> None:
    assert bar_length(bar, meter) == pytest.approx(length)


def test_tuplet_lengths_are_exact() -> None:
    # Three (3 triplets of /3 notes: float arithmetic would not land exactly on 8.
    assert check("M:4/4 K:Cmaj (3 c /3 d /3 e /3 (3 c /3 d /3 e /3 (3 c /3 d /3 e /3 c 6 | c 8 |").valid
    assert check("M:6/8 K:Cmaj (5 c d e f g (5 c d e f g | c 6 |").valid


@pytest.mark.parametrize(
    "bar, length",
    [
        ("[ C E G ] 2", 2),  # the duration written after the chord
        ("[ C 2 E 2 G 2 ]", 2),  # or that of its first note
        ("[ C E ]", 1),
        ("[ C 3 E ]", 3),  # only the first note's duration counts
        ("[ C 2 E ] 3", 6),  # both: they multiply (ABC 2.1)
        ("[ C E ] > d", 2),  # a chord in a broken pair
        ("c [ E G ] /2 c", 2.5),
    ],
)
def test_chords_count_once(bar: str, length: float) -> None:
    assert bar_length(bar) == length


@pytest.mark.parametrize(
    "body, code",
    [
        ("2 c 7 | c 8 |", "duration_without_note"),  # at the start of a bar
        ("c 2 2 c 4 | c 8 |", "duration_without_note"),  # a second duration
        ("c 4 | 2 c 3 | c 8 |", "duration_without_note"),
        ("c 2 /2> d c 4 | c 8 |", "duration_without_note"),  # fused duration on a note with one
        ("> c 7 | c 8 |", "broken_without_pair"),
        ("c 7 > | c 8 |", "broken_without_pair"),  # its second note is in the next bar
        ("c 7 >", "broken_without_pair"),  # at the end of the tune
        ("c > (3 d e f c 5 | c 8 |", "broken_without_pair"),
        ("(3 c d | e 8 |", "tuplet_incomplete"),
        ("(3 c (3 d e f c 6 | c 8 |", "tuplet_incomplete"),
        ("[ C E | c 8 |", "unclosed_chord"),
        ("c 7 [ C E", "unclosed_chord"),
        ("c 8 ] | c 8 |", "unmatched_chord_close"),
        ("[ ] c 8 | c 8 |", "empty_chord"),
        ("c 8 | foo | c 8 |", "unknown_token"),
    ],
)
def test_rhythm_errors(body: str, code: str) -> None:
    findings = check(f"M:4/4 K:Cmaj {body}")
    assert code in findings.reasons
    assert not findings.valid


def test_problem_positions_point_into_the_tokens() -> None:
    tokens = "M:4/4 K:Cmaj c 8 | d 8 | e 4 > f 4 | g 9 | c 8 |".split()
    findings = validate_tokens(tokens)
    assert findings.reasons == ["bar_too_long"]
    (problem,) = findings.problems
    assert problem["bar"] == 3  # the fourth written bar (0-based)
    assert tokens[problem["token"]] == "g"  # where that bar starts
    assert "9" in problem["message"] and "8" in problem["message"]
    assert findings.bar_lengths_failed == [9.0]


# --- Bars and pickups --------------------------------------------------------------------------
def test_short_and_long_bars() -> None:
    findings = check("M:3/4 K:Cmaj c 6 | d 4 | e 8 | c 6 |")
    assert codes(findings) == ["bar_too_short", "bar_too_long"]
    assert findings.bar_lengths_failed == [4.0, 8.0]
    assert [p["bar"] for p in findings.problems] == [1, 2]


def test_pickup_completed_by_the_last_bar() -> None:
    findings = check("M:6/8 K:Cmaj G | c 2 c e 2 c | d 2 d f 2 d | c 3 c 2 |")
    assert findings.valid, findings.problems
    assert findings.pickup == 1.0
    assert findings.bar_count == 3  # the pickup is not a bar, the completing last bar is


def test_pickup_with_a_full_last_bar_is_fine() -> None:
    findings = check("M:4/4 K:Cmaj G A | c 8 | d 8 |")
    assert findings.valid
    assert findings.pickup == 2.0


def test_short_last_bar_that_does_not_complete_the_pickup() -> None:
    findings = check("M:6/8 K:Cmaj G | c 6 | d 6 | c 4 |")
    assert codes(findings) == ["bar_too_short"]
    assert findings.problems[0]["bar"] == 3


def test_short_last_bar_without_pickup() -> None:
    assert check("M:4/4 K:Cmaj c 8 | d 8 | c 4 |").reasons == ["bar_too_short"]


def test_only_the_first_bar_may_be_a_pickup() -> None:
    findings = check("M:4/4 K:Cmaj c 8 | d 4 | e 8 | c 8 |")
    assert findings.reasons == ["bar_too_short"]
    assert findings.pickup == 0.0


def test_a_lone_short_bar_is_not_a_pickup() -> None:
    assert check("M:4/4 K:Cmaj c 4 |").reasons == ["bar_too_short"]


def test_bar_split_by_repeat_signs_counts_as_one() -> None:
    # "... d 4 :| |: e 4 ..." splits one bar of 8 in the middle.
    findings = check("M:4/4 K:Cmaj |: c 8 | d 4 :| |: e 4 | f 8 | g 4 :|")
    assert findings.valid, findings.problems
    assert findings.form == "AABB"
    assert [s["bars"] for s in findings.sections] == [2, 2]


def test_bar_split_by_a_lone_end_repeat() -> None:
    findings = check("M:2/4 K:Cmaj c 4 | A B :| c d | e 4 | f 2 |")
    assert findings.valid, findings.problems
    assert findings.form == "AAB"


def test_bar_split_whose_halves_do_not_add_up() -> None:
    # The A part's last bar is short and nothing completes it. (e 2 after |: is the B part's
    # pickup, fine on its own since the ground-truth review: it used to be flagged too.)
    findings = check("M:4/4 K:Cmaj |: c 8 | d 4 :| |: e 2 | f 8 :|")
    assert codes(findings) == ["bar_too_short"]
    assert findings.problems[0]["bar"] == 1


def test_section_pickup_after_a_repeat_sign() -> None:
    # O'Neill's "Crossroads Dance": the A part ends on a full bar, the B part has a pickup.
    findings = check("M:2/4 K:Cmaj |: c 4 | d 4 :| |: e 2 | f 4 | g 4 :|")
    assert findings.valid, findings.problems
    assert findings.form == "AABB"
    assert [s["bars"] for s in findings.sections] == [2, 2]  # the pickup is not a bar
    assert check("M:2/4 K:Cmaj c 4 | d 4 :| e 2 | f 4 |").valid  # after a lone :| too


def test_section_pickup_between_repeat_signs_is_no_section() -> None:
    findings = check("M:4/4 K:Cmaj |: c 8 | d 8 :| e 2 |: f 8 | g 6 :|")
    assert findings.valid, findings.problems
    assert findings.form == "AABB"
    assert [(s["bars"], s["start_bar"]) for s in findings.sections] == [(2, 0), (2, 2)]


def test_short_bar_after_a_repeat_sign_that_ends_the_tune() -> None:
    assert check("M:2/4 K:Cmaj c 4 | d 4 :| e 2").reasons == ["bar_too_short"]


def test_short_first_bar_of_a_second_ending_is_no_pickup() -> None:
    findings = check("M:4/4 K:Cmaj |: c 8 |1 d 8 :| |2 e 4 | f 8 |")
    assert findings.reasons == ["bar_too_short"]


# A bar split by a double bar: the ingest writes "||" as "|" (the vocabulary has no double bar).
# O'Neill's "The Maids of Araglen": "... B2 G2 G2 z || d | edef g2 fe | ...".
LOST_DOUBLE_BAR = "M:4/4 K:Cmaj G | c 8 | d 8 | e 2 c 2 c 2 z | g | a g a b c' 2 b a | g 8 | c 7 |"


def test_bar_split_by_a_lost_double_bar() -> None:
    findings = check(LOST_DOUBLE_BAR)
    assert findings.valid, findings.problems
    # The plain bar line between the halves starts a section, as the double bar did.
    assert findings.form == "AB"
    assert [(s["bars"], s["start_bar"]) for s in findings.sections] == [(3, 0), (3, 4)]
    assert findings.bar_count == 6
    assert findings.pickup == 1.0


def test_lost_double_bar_ends_a_second_ending() -> None:
    findings = check("M:4/4 K:Cmaj |: c 8 |1 d 8 :| |2 e 6 | f 2 | g 8 | c 8 :|")
    assert findings.valid, findings.problems
    assert findings.form == "AABB"


def test_lost_double_bar_inside_an_open_repeat_is_no_boundary() -> None:
    findings = check("M:4/4 K:Cmaj |: c 8 | d 6 | e 2 | f 8 | c 8 :|")
    assert findings.valid, findings.problems
    assert findings.form == "AA"


@pytest.mark.parametrize(
    "body",
    [
        "c 4 | d 4 | e 4 | f 4 | g 4 | a 4 |",  # a tune barred in half bars
        "c 2 | d 6 | e 8 | f 8 |",  # the pickup, then a misplaced bar line
        "c 8 | d 8 | e 6 | f 2 |",  # a short last bar is no next section's pickup
        "c 8 | d 4 | e 2 | f 2 | c 8 |",  # three pieces
        "c 8 | d 6 | e 3 | f 8 |",  # halves that do not add up
    ],
)
def test_short_bars_that_are_no_split_bar(body: str) -> None:
    assert "bar_too_short" in check(f"M:4/4 K:Cmaj {body}").reasons


def test_bar_lengths_are_exact_fractions_of_written_bars() -> None:
    assert bar_lengths("M:4/4 K:Cmaj G | c 8 | (3 c d e c > d e 2 | [ C E ] 3 |") == [
        1, 8, Fraction(6), 3]
    assert bar_lengths("M:6/8 K:Cmaj |: c /3 d /3 e /3 :|") == [1]
    assert bar_lengths([]) == []


def test_bars_of_every_meter() -> None:
    for meter, full in {"2/4": 4, "3/4": 6, "4/4": 8, "6/8": 6, "9/8": 9, "12/8": 12, "3/2": 12}.items():
        bar = "c 8 c 4" if full == 12 else f"c {full}"
        assert check(f"M:{meter} K:Cmaj {bar} | {bar} |").valid, meter
        assert check(f"M:{meter} K:Cmaj {bar} | {bar} c |").reasons == ["bar_too_long"], meter


# --- Repeats, sections and endings -------------------------------------------------------------
def test_standard_reel() -> None:
    findings = check(REEL)
    assert findings.valid, findings.problems
    assert findings.form == "AABB"
    assert findings.standard_form
    assert findings.bar_count == 16
    assert findings.sections == [
        {"label": "A", "bars": 8, "repeats": True, "has_endings": False, "ends_on_tonic": True, "start_bar": 0},
        {"label": "B", "bars": 8, "repeats": True, "has_endings": False, "ends_on_tonic": True, "start_bar": 8},
    ]
    assert findings.ends_on_tonic
    assert findings.meter == "4/4" and findings.mode == "maj"


def test_jig_with_pickup_and_endings() -> None:
    findings = check(JIG)
    assert findings.valid, findings.problems
    assert findings.pickup == 1.0
    assert findings.form == "AABB"
    # The endings count once: 6 bars + 2 of the first ending; the B part's pickup is not a bar.
    assert [(s["bars"], s["repeats"], s["has_endings"]) for s in findings.sections] == [(8, True, True), (8, True, False)]
    assert findings.standard_form
    assert findings.bar_count == 16
    # The A part's second ending ends on the B part's pickup g; the tune ends on a chord over C.
    assert [s["ends_on_tonic"] for s in findings.sections] == [False, True]
    assert findings.ends_on_tonic
    assert findings.meter == "6/8" and findings.mode == "min"


def test_waltz_without_repeats() -> None:
    findings = check(WALTZ)
    assert findings.valid, findings.problems
    assert findings.form == "A"
    assert findings.bar_count == 16
    assert not findings.standard_form
    assert findings.sections[0]["repeats"] is False


def test_lone_end_repeat_repeats_from_the_start() -> None:
    findings = check("M:4/4 K:Cmaj c 8 | d 8 :| e 8 | c 8 |")
    assert findings.valid
    assert findings.form == "AAB"
    assert [(s["bars"], s["repeats"]) for s in findings.sections] == [(2, True), (2, False)]


def test_second_lone_end_repeat_repeats_from_the_previous_one() -> None:
    findings = check("M:4/4 K:Cmaj c 8 | d 8 :| e 8 | c 8 :|")
    assert findings.valid
    assert findings.form == "AABB"
    assert not findings.standard_form  # 2 + 2 bars, not 8 + 8


def test_non_repeated_then_repeated_section() -> None:
    findings = check("M:4/4 K:Cmaj c 8 | d 8 |: e 8 | c 8 :|")
    assert findings.valid
    assert findings.form == "ABB"


def test_endings_count_once() -> None:
    findings = check("M:4/4 K:Cmaj |: c 8 | d 8 |1 e 8 :| |2 f 8 | g 8 | c 8 |")
    assert findings.valid, findings.problems
    assert findings.form == "AAB"  # the second ending lasts as long as the first: 1 bar
    assert [(s["bars"], s["has_endings"]) for s in findings.sections] == [(3, True), (2, False)]
    assert findings.bar_count == 5


@pytest.mark.parametrize(
    "body, code",
    [
        ("|: c 8 |1 d 8 :| e 8 |", "unmatched_ending"),  # |1 without |2
        ("|: c 8 |1 d 8 |", "unmatched_ending"),
        ("|: c 8 |1 d 8 :| |: e 8 :|", "unmatched_ending"),
        ("c 8 | d 8 |2 e 8 |", "unmatched_ending"),  # |2 without |1
        ("|: c 8 |1 d 8 | |2 e 8 |", "ending_without_repeat"),  # first ending not closed by :|
        ("|: c 8 | d 8 |", "unclosed_repeat"),
        ("|: c 8 | d 8 |: e 8 :|", "unclosed_repeat"),
        ("c 8 :| |:", "unclosed_repeat"),
        (":| c 8 | d 8 |", "unmatched_repeat_end"),
        ("c 8 :| :| d 8 |", "unmatched_repeat_end"),
        ("|: c 8 |1 d 8 :| |2 e 8 :|", "unmatched_repeat_end"),
    ],
)
def test_repeat_structure_errors(body: str, code: str) -> None:
    findings = check(f"M:4/4 K:Cmaj {body}")
    assert code in findings.reasons, findings.problems
    assert not findings.valid
    assert not findings.standard_form


def test_structure_problem_position() -> None:
    tokens = "M:4/4 K:Cmaj c 8 | d 8 |2 e 8 |".split()
    (problem,) = validate_tokens(tokens).problems
    assert problem["code"] == "unmatched_ending"
    assert tokens[problem["token"]] == "|2"
    assert problem["bar"] == 2  # the bar the |2 starts


# --- Cadences ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "last, tonic",
    [
        ("C 8", True), ("c 8", True), ("c' 8", True), ("C, 8", True), ("=C 8", True), ("=c' 8", True),
        ("^C 8", False), ("_c 8", False), ("E 8", False), ("g 8", False),
        ("c 6 z 2", True),  # rests do not sound: the last note is c
        ("[ C E G ] 8", True), ("[ E G c ] 8", False), ("[ G C ] 8", True),  # a chord's lowest note
    ],
)
def test_ends_on_tonic(last: str, tonic: bool) -> None:
    findings = check(f"M:4/4 K:Cmix d 8 | {last} |")
    assert findings.valid, findings.problems
    assert findings.ends_on_tonic is tonic
    assert findings.sections[-1]["ends_on_tonic"] is tonic


def test_each_section_has_its_cadence() -> None:
    findings = check("M:4/4 K:Cmaj |: d 8 | G 8 :| |: e 8 | c 8 :|")
    assert [s["ends_on_tonic"] for s in findings.sections] == [False, True]
    assert findings.ends_on_tonic


# --- Header and special tokens -----------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("K:Cmaj c 8 |", ["missing_meter"]),
        ("M:4/4 c 8 |", ["missing_key"]),
        ("c 8 |", ["missing_meter", "missing_key"]),
        ("K:Cmaj M:4/4 c 8 |", ["header_order"]),
        ("M:4/4 M:3/4 K:Cmaj c 8 |", ["duplicate_meter"]),
        ("M:4/4 K:Cmaj K:Cmin c 8 |", ["duplicate_key"]),
        ("M:4/4 K:Cmaj c 8 | M:3/4 c 8 |", ["header_in_body"]),
        ("M:4/4 K:Cmaj c 8 | K:Cdor c 8 |", ["header_in_body"]),
        ("M:4/4 K:Cmaj c 8 | <s> c 8 |", ["misplaced_start"]),
        ("M:4/4 K:Cmaj c 8 | </s> c 8 |", ["tokens_after_end"]),
        ("<s> M:4/4 K:Cmaj c 8 | </s> </s>", ["tokens_after_end"]),
        ("M:4/4 K:Cmaj", ["empty_body"]),
        ("M:4/4 K:Cmaj | :|", ["empty_body"]),
    ],
)
def test_header_errors(text: str, expected: list[str]) -> None:
    findings = check(text)
    assert findings.reasons == expected, findings.problems
    assert not findings.valid


def test_start_and_end_tokens_are_accepted() -> None:
    for text in ("<s> M:4/4 K:Cmaj c 8 |", "M:4/4 K:Cmaj c 8 | </s>", "<s> M:4/4 K:Cmaj c 8 | </s>"):
        findings = check(text)
        assert findings.valid, (text, findings.problems)
        assert findings.meter == "4/4" and findings.mode == "maj"


def test_truncated_tune_is_invalid() -> None:
    findings = check("M:4/4 K:Cmaj c 8 | d 8 |", truncated=True)
    assert findings.reasons == ["truncated"]
    assert not findings.valid
    assert findings.bar_count == 2  # the rest of the analysis is still done


@pytest.mark.parametrize("tokens", [[], None, [":|"], ["</s>"], ["<s>"], [""], ["M:4/4"], "M:4/4 K:Cmaj c 8"])
def test_degenerate_inputs_get_a_verdict(tokens) -> None:
    findings = validate_tokens(tokens)
    assert isinstance(findings, Findings)
    assert "internal_error" not in findings.reasons
    assert findings.valid == (tokens == "M:4/4 K:Cmaj c 8")  # a string is split on whitespace


def test_non_string_tokens_are_unknown() -> None:
    findings = validate_tokens(["M:4/4", "K:Cmaj", 3, None, ["c"], "c", "8", "|"])
    assert codes(findings) == ["unknown_token"] * 3
    assert "internal_error" not in findings.reasons


# One tune for each reason code the rules give.
A_TUNE_FOR_EACH_REASON = {
    "missing_meter": "K:Cmaj c 8 |",
    "missing_key": "M:4/4 c 8 |",
    "duplicate_meter": "M:4/4 M:3/4 K:Cmaj c 8 |",
    "duplicate_key": "M:4/4 K:Cmaj K:Cmin c 8 |",
    "header_order": "K:Cmaj M:4/4 c 8 |",
    "header_in_body": "M:4/4 K:Cmaj c 8 | M:3/4 c 8 |",
    "misplaced_start": "M:4/4 K:Cmaj c 8 | <s> c 8 |",
    "tokens_after_end": "M:4/4 K:Cmaj c 8 | </s> c 8 |",
    "unknown_token": "M:4/4 K:Cmaj c 8 | foo | c 8 |",
    "empty_body": "M:4/4 K:Cmaj",
    "duration_without_note": "M:4/4 K:Cmaj 2 c 7 | c 8 |",
    "broken_without_pair": "M:4/4 K:Cmaj > c 7 | c 8 |",
    "tuplet_incomplete": "M:4/4 K:Cmaj (3 c d | e 8 |",
    "unclosed_chord": "M:4/4 K:Cmaj [ C E | c 8 |",
    "unmatched_chord_close": "M:4/4 K:Cmaj c 8 ] | c 8 |",
    "empty_chord": "M:4/4 K:Cmaj [ ] c 8 | c 8 |",
    "bar_too_long": "M:4/4 K:Cmaj c 8 | d 9 | c 8 |",
    "bar_too_short": "M:4/4 K:Cmaj c 8 | d 4 | e 8 |",
    "unmatched_ending": "M:4/4 K:Cmaj c 8 | d 8 |2 e 8 |",
    "ending_without_repeat": "M:4/4 K:Cmaj |: c 8 |1 d 8 | |2 e 8 |",
    "unclosed_repeat": "M:4/4 K:Cmaj |: c 8 | d 8 |",
    "unmatched_repeat_end": "M:4/4 K:Cmaj :| c 8 | d 8 |",
}


def test_every_reason_code_is_given_for_some_tune_and_described_in_the_summary(monkeypatch) -> None:
    """No code is listed that no rule gives (or given that is not listed): a tune for each of
    them gets it, "truncated" comes from the flag, "internal_error" from a validator that fails;
    the summary describes each."""
    findings = [check(text) for text in A_TUNE_FOR_EACH_REASON.values()]
    for code, found in zip(A_TUNE_FOR_EACH_REASON, findings):
        assert code in found.reasons, (code, found.problems)
    findings.append(check(REEL, truncated=True))
    assert findings[-1].reasons == ["truncated"]

    def broken(tokens: list, truncated: bool) -> Findings:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(check_module, "_validate", broken)
    findings.append(check(REEL))
    assert findings[-1].reasons == ["internal_error"] and "ZeroDivisionError" in findings[-1].problems[0]["message"]
    given = {code for found in findings for code in found.reasons}
    assert given == set(REASON_CODES)
    text = format_summary(summarize(findings))
    for code in REASON_CODES:
        assert re.search(rf"^  {code} +\d+  {re.escape(REASON_DESCRIPTIONS[code])}$", text, re.MULTILINE), code


def test_rows_convert_to_arrow() -> None:
    rows = [check(text).as_row() for text in (REEL, JIG, "c 8 | foo", "M:4/4 K:Cmaj |1 c 4 |")]
    table = pa.Table.from_pylist(rows)
    assert table.num_rows == 4
    assert table.column("valid").to_pylist() == [True, True, False, False]
    assert table.column("sections").type.value_type.get_field_index("bars") >= 0


# --- Random input never breaks it --------------------------------------------------------------
JUNK = ["", " ", "foo", "M:5/4", "K:Gmaj", "|||", "((", "c''", "10", "\x00"]
ANY_TOKEN = st.sampled_from(list(TOKENS) + JUNK)
BODY_TOKEN = st.sampled_from([t for t in TOKENS if t not in METER_TOKENS | MODE_TOKENS | {"<s>", "</s>"}])


@st.composite
def plausible_tunes(draw) -> list[str]:
    """A header, then body tokens: reaches the bar and repeat logic more often than pure noise."""
    header = [draw(st.sampled_from(sorted(METER_TOKENS))), draw(st.sampled_from(sorted(MODE_TOKENS)))]
    return header + draw(st.lists(BODY_TOKEN, max_size=80))


def assert_consistent(findings: Findings, tokens: list) -> None:
    assert "internal_error" not in findings.reasons, findings.problems
    assert findings.valid == (not findings.reasons)
    assert set(findings.reasons) == {p["code"] for p in findings.problems}
    assert set(findings.reasons) <= set(REASON_CODES)
    assert findings.length == len(tokens)
    for p in findings.problems:
        assert -1 <= p["token"] <= len(tokens) and p["bar"] >= -1 and p["message"]
    assert findings.bar_count == sum(s["bars"] for s in findings.sections) >= 0
    assert findings.form == "".join(s["label"] * (2 if s["repeats"] else 1) for s in findings.sections)
    assert not findings.standard_form or findings.form == "AABB"
    row = findings.as_row()
    assert set(BEAM_COLUMNS) <= set(row)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANY_TOKEN, max_size=120))
def test_random_sequences_get_a_consistent_verdict(tokens: list[str]) -> None:
    assert_consistent(validate_tokens(tokens), tokens)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plausible_tunes(), st.booleans())
def test_random_bodies_get_a_consistent_verdict(tokens: list[str], truncated: bool) -> None:
    findings = validate_tokens(tokens, truncated=truncated)
    assert_consistent(findings, tokens)
    assert findings.meter == tokens[0][2:] and findings.mode == tokens[1][3:]
    if truncated:
        assert not findings.valid


# --- Summaries ---------------------------------------------------------------------------------
def test_summarize_and_format() -> None:
    findings = [check(REEL), check(JIG), check(WALTZ), check("M:4/4 K:Cmaj c 8 | d 4 |"), check("foo")]
    summary = summarize(findings)
    assert summary["tunes"] == 5 and summary["valid"] == 3
    assert summary["valid_fraction"] == pytest.approx(0.6)
    assert summary["by_meter"]["4/4"] == {"tunes": 2, "valid": 1, "valid_fraction": 0.5}
    assert summary["by_meter"]["?"]["tunes"] == 1  # no meter at all
    assert summary["by_mode"]["min"]["valid"] == 1
    assert summary["reasons"]["bar_too_short"] == 1
    assert summary["forms"]["AABB"] == 2
    assert summary["standard_form_fraction"] == pytest.approx(0.4)
    # Rows (e.g. read back from Parquet) work the same as Findings.
    assert summarize(f.as_row() for f in findings) == summary
    text = format_summary(summary)
    assert "valid: 3 (60.0%)" in text and "bar_too_short" in text and "AABB" in text


def test_tallies_of_parts_merge_into_the_summary_of_all() -> None:
    findings = [check(REEL), check(JIG), check(WALTZ), check("M:4/4 K:Cmaj c 8 | d 4 |"), check("foo")]
    first, second = SummaryTally(), SummaryTally()
    for f in findings[:2]:
        first.add(f)
    for f in findings[2:]:
        second.add(f.as_row())
    assert first.merge(second).summary() == summarize(findings)


def test_summarize_nothing() -> None:
    summary = summarize([])
    assert summary["tunes"] == 0 and summary["valid_fraction"] == 0.0
    assert "tunes: 0" in format_summary(summary)


# --- Beam --------------------------------------------------------------------------------------
def test_beam_transform_adds_findings_columns() -> None:
    rows = [
        {"id": "reel", "tokens": REEL.split()},
        {"id": "cut", "tokens": "M:4/4 K:Cmaj c 8 | d 8 |".split(), "truncated": True},
        {"id": "junk", "tokens": ["foo"]},
    ]
    expected = []
    for row in rows:
        values = validate_tokens(row["tokens"], row.get("truncated", False)).as_row()
        expected.append({**row, **{c: values[c] for c in BEAM_COLUMNS}})
    assert [e["valid"] for e in expected] == [True, False, False]
    assert expected[0]["form"] == "AABB" and expected[1]["reasons"] == ["truncated"]

    pipeline = TestPipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    out = pipeline | beam.Create(rows) | ValidateTunes()
    assert_that(out, equal_to(expected))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(beam.metrics.MetricsFilter().with_namespace("validate"))["counters"]
    }
    assert counters["valid"] == 1 and counters["invalid"] == 2
    assert counters["truncated"] == 1 and counters["unknown_token"] == 1


def test_beam_transform_rejects_unknown_columns() -> None:
    with pytest.raises(ValueError):
        ValidateTunes(columns=["valid", "nonsense"])
