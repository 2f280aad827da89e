"""What the validator reports: the reason codes and the ``Findings`` of one tune.

Positions in problem records:

* ``token``: 0-based index into the token list exactly as given (a leading ``<s>`` counts).
* ``bar``: 0-based index of the written bar (the notes between two bar lines; a pickup, when
  there is one, is bar 0). Problems in the header or after ``</s>`` have bar -1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Every reason code, with what it means. REASON_CODES is the stable tuple of codes.
REASON_DESCRIPTIONS: dict[str, str] = {
    "truncated": "the tune was cut off (generation hit its length limit)",
    "missing_meter": "no M: token at the start",
    "missing_key": "no K: token at the start",
    "duplicate_meter": "more than one M: token in the header",
    "duplicate_key": "more than one K: token in the header",
    "header_order": "the header is not M: then K:",
    "header_in_body": "an M: or K: token inside the body",
    "misplaced_start": "a <s> token that is not the first token",
    "tokens_after_end": "tokens after </s>",
    "unknown_token": "a token not in the folk-rnn v2 vocabulary",
    "empty_body": "no notes, rests or chords",
    "duration_without_note": "a duration token with no note, rest or chord to apply to",
    "broken_without_pair": "a broken rhythm (> <) not between two notes of one bar",
    "tuplet_incomplete": "a tuplet with fewer notes than it announces before a bar line",
    "unclosed_chord": "a [ without its ]",
    "unmatched_chord_close": "a ] without its [",
    "empty_chord": "a chord with no notes",
    "bar_too_long": "a bar longer than the meter allows",
    "bar_too_short": "a bar shorter than the meter allows (and not a pickup or its completion)",
    "unmatched_ending": "a |1 without its |2, or a |2 without its |1",
    "ending_without_repeat": "a first ending not closed by :|",
    "unclosed_repeat": "a |: never closed by :|",
    "unmatched_repeat_end": "a :| with nothing to repeat",
    "internal_error": "the validator failed on this input (a bug: please report it)",
}
REASON_CODES: tuple[str, ...] = tuple(REASON_DESCRIPTIONS)
# Codes about the repeat structure: standard_form needs none of them.
STRUCTURE_CODES = frozenset(
    {"unmatched_ending", "ending_without_repeat", "unclosed_repeat", "unmatched_repeat_end"}
)

# The findings columns a tune row carries by default (what ValidateTunes adds).
BEAM_COLUMNS: tuple[str, ...] = (
    "valid", "reasons", "bar_count", "bar_lengths_failed", "sections", "form",
    "standard_form", "ends_on_tonic", "pickup",
)

# A problem while validating: (code, bar, token, message); Findings.problems holds them as dicts.
Problem = tuple[str, int, int, str]


def problem(code: str, bar: int, token: int, message: str) -> Problem:
    return (code, bar, token, message)


@dataclass
class Findings:
    """What the validator found about one tune. Flat, plain values: ``as_row()`` feeds Arrow.

    Lengths (``bar_lengths_failed``, ``pickup``) are floats in units of L:1/8; problem
    messages give them exactly. ``sections`` is a list of dicts with keys label, bars,
    repeats, has_endings, ends_on_tonic and start_bar (the written bar where it starts).
    """

    valid: bool
    reasons: list[str] = field(default_factory=list)  # distinct codes, in order of first problem
    problems: list[dict] = field(default_factory=list)  # {code, bar, token, message}
    meter: str | None = None  # e.g. "6/8"
    mode: str | None = None  # maj, min, dor, mix
    bar_count: int = 0  # as played once: repeats and endings counted once, pickup not counted
    bar_lengths_failed: list[float] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)
    form: str = ""  # e.g. "AABB": a repeated section's letter appears twice
    standard_form: bool = False  # exactly two repeated 8-bar sections (AABB, 8 + 8)
    ends_on_tonic: bool = False  # the last sounding note of the tune is a C
    pickup: float = 0.0  # length of the pickup bar, 0 when none
    length: int = 0  # number of tokens given

    def as_row(self) -> dict:
        """A dict of plain Python values (lists, dicts, str, int, float, bool, None)."""
        return asdict(self)


