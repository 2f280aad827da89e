"""The validator's verdict on one tune: header, scan, structure and bar lengths together.

``validate_tokens`` is a pure function that never raises: any sequence at all (a model's
output, an empty list, unknown strings) gets a verdict, a ``Findings``. A tune is valid when
its header, its bar lengths and its repeat structure are all right; every failure is a
problem record (a reason code from ``REASON_CODES``, where it is, and a message).

A tonic is a C of any octave with no accidental or a natural sign (``folkrnn.schemas.music.TONIC_TOKENS``);
accidentals are read per token: an earlier ``^c`` in the bar is not carried over to a later ``c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from folkrnn.schemas.music import BAR_TICKS, COMPOUND_METERS, TONIC_TOKENS, eighths
from folkrnn.transforms.validator.findings import STRUCTURE_CODES, Findings, Problem
from folkrnn.transforms.validator.findings import problem as _problem
from folkrnn.transforms.validator.scan import Scan, index_of_end, parse_header, scan_body
from folkrnn.transforms.validator.structure import (
    Structure,
    classify_bars,
    find_lead_ins,
    split_at_plain_bars,
)


def bar_lengths(tokens: Sequence[str]) -> list[Fraction]:
    """The length of every written bar (those with notes), exactly, in units of L:1/8.

    The measure the bar rules use, for cross-checks against other implementations.
    """
    tokens = tokens.split() if isinstance(tokens, str) else list(tokens)
    problems: list = []
    meter, _, start = parse_header(tokens, problems)
    scan = scan_body(tokens, start, index_of_end(tokens, start), meter in COMPOUND_METERS, problems)
    return [eighths(t) for t, n in zip(scan.ticks, scan.elements) if n]


def validate_tokens(tokens: Sequence[str], truncated: bool = False) -> Findings:
    """Check one tune's tokens (``M:.. K:.. body``, with or without ``<s>``/``</s>``).

    Never raises. A plain string is split on whitespace; None counts as no tokens.
    """
    if tokens is None:
        tokens = []
    elif isinstance(tokens, str):
        tokens = tokens.split()
    elif not isinstance(tokens, list):
        try:
            tokens = list(tokens)
        except TypeError:
            tokens = [tokens]
    try:
        return _validate(tokens, bool(truncated))
    except Exception as err:  # a bug must not stop a pipeline of a million tunes; tests forbid it
        problem = {"code": "internal_error", "bar": -1, "token": -1, "message": repr(err)[:200]}
        return Findings(valid=False, reasons=["internal_error"], problems=[problem], length=len(tokens))


def _validate(tokens: list, truncated: bool) -> Findings:
    problems: list[Problem] = []
    if truncated:
        problems.append(_problem("truncated", -1, len(tokens), "the tune was cut off"))
    meter, mode, body_start = parse_header(tokens, problems)
    stop = index_of_end(tokens, body_start)
    if stop + 1 < len(tokens):
        problems.append(_problem("tokens_after_end", -1, stop + 1, f"{len(tokens) - stop - 1} token(s) after </s>"))
    scan = scan_body(tokens, body_start, stop, meter in COMPOUND_METERS, problems)
    findings = Findings(valid=False, meter=meter, mode=mode, length=len(tokens))
    if not any(scan.elements):
        problems.append(_problem("empty_body", -1, body_start, "no notes, rests or chords"))
    else:
        _shape(scan, BAR_TICKS.get(meter), problems, findings)
    problems.sort(key=lambda p: p[2])
    findings.problems = [{"code": c, "bar": b, "token": t, "message": m} for c, b, t, m in problems]
    findings.reasons = list(dict.fromkeys(p[0] for p in problems))
    findings.valid = not problems
    return findings


def _shape(scan: Scan, full: int | None, problems: list, findings: Findings) -> None:
    """Sections, bar counts, bar lengths, pickup, form and cadences into ``findings``."""
    with_notes = [j for j, n in enumerate(scan.elements) if n]
    # A short first bar is a pickup, unless it is all there is.
    pickup = with_notes[0] if full and len(with_notes) > 1 and scan.ticks[with_notes[0]] < full else -1
    split = split_at_plain_bars(scan, with_notes, full) if full else {}
    lead_ins = find_lead_ins(scan, with_notes, full) if full else set()
    # Pickups are no bars: so ":| e 2 |: f 8" does not make "e 2" a section of its own.
    pickups: set[int] = {pickup, *split.values(), *lead_ins} - {-1}
    structure = Structure(scan, pickups, set(split), problems)
    sections = structure.run()
    short: set[int] = set()
    if full:
        short, pickups = classify_bars(scan, sections, full, pickup, split, lead_ins)
        for j in with_notes:
            if scan.ticks[j] > full or j in short:
                code = "bar_too_long" if scan.ticks[j] > full else "bar_too_short"
                problems.append(_problem(code, structure.nonempty[j], scan.start[j],
                                         f"bar lasts {eighths(scan.ticks[j])} eighths, the meter wants {eighths(full)}"))
                findings.bar_lengths_failed.append(float(eighths(scan.ticks[j])))
    labels = [_label(n) for n in range(len(sections))]
    for label, s in zip(labels, sections):
        bars = sum(1 for j in range(s.start, s.played_end + 1) if scan.elements[j] and j not in pickups)
        findings.sections.append({
            "label": label, "bars": bars, "repeats": s.repeats, "has_endings": s.e1 is not None,
            "ends_on_tonic": _ends_on_tonic(scan, s.start, s.end), "start_bar": structure.nonempty[s.start],
        })
    findings.bar_count = sum(s["bars"] for s in findings.sections)
    findings.form = "".join(s["label"] * (2 if s["repeats"] else 1) for s in findings.sections)
    findings.standard_form = (
        findings.form == "AABB"
        and all(s["bars"] == 8 for s in findings.sections)
        and not any(p[0] in STRUCTURE_CODES for p in problems)
    )
    findings.ends_on_tonic = _ends_on_tonic(scan, 0, len(scan.ticks) - 1)
    findings.pickup = float(eighths(scan.ticks[pickup])) if pickup >= 0 else 0.0


def _label(n: int) -> str:
    """A, B, ... Z, then S27, S28 ... (model output can have many sections)."""
    return chr(ord("A") + n) if n < 26 else f"S{n + 1}"


def _ends_on_tonic(scan: Scan, first: int, last: int) -> bool:
    for j in range(last, first - 1, -1):
        if scan.last_pitch[j] is not None:
            return scan.last_pitch[j] in TONIC_TOKENS
    return False

