"""The validator's structure: sections, repeats and endings, and which short bars are right.

Choices the rules leave open, made here:

* ``:|`` repeats back to the last ``|:`` or to the end of the previous section (common
  practice: ``A :| B :|`` plays AABB), or to the start of the tune.
* A second ending ends at the next section sign, at the end of the tune, or once it has as
  many bars as the first ending.

Bar lengths. A bar longer than the meter is always wrong. A short bar is fine when it is:

* the tune's first bar (the pickup), whether or not the last bar completes it;
* half of a bar split by a repeat sign (``d 4 :| |: e 4`` in 4/4);
* half of a bar split by a section boundary the tokens cannot show: two short bars that add
  up to one full bar, either side of a plain ``|``, with full bars around them. The ingest
  writes ``||`` as ``|`` (the vocabulary has no double bar), so ``... D 2 z || A | ...`` in 2/4
  arrives as ``D 2 z | A``; the plain bar line then starts a new section, as ``||`` would;
* a section's first bar right after a repeat sign (the section's pickup, like the tune's);
* a section's (or ending's) last bar that completes the tune's pickup or a section's first
  bar, or a section's first bar that such a last bar completes.

Still flagged on purpose, although real collections have them (the ground truth in
tests/test_validate_groundtruth.py counts them): a last bar written short with nothing to
complete (``D 3 D 2 :|`` in 6/8 with no pickup; the final note lacks its full value); a bar of
exactly two bars (a missing bar line); a mid-tune bar a note short or long; a bar whose
``(5`` was meant as five in the time of four. In generated tunes each is a real mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

from folkrnn.schemas.vocab import BAR_TOKENS
from folkrnn.transforms.validator.findings import problem as _problem
from folkrnn.transforms.validator.scan import Scan

# --- Sections and repeats ------------------------------------------------------------------------
_BODY, _E1, _E1_DONE, _E2 = range(4)  # where a section is: body, first ending, after its :|, second


@dataclass
class Section:
    start: int  # first segment
    end: int = -1  # last segment, second ending included
    repeats: bool = False
    opened_at: int = -1  # token index of the |: that opened it, or -1
    phase: int = _BODY
    e1_token: int = -1  # token index of its |1
    e1: tuple[int, int] | None = None  # first ending's segments (first, last)
    e2: tuple[int, int] | None = None
    e2_start: int = -1

    @property
    def played_end(self) -> int:
        """Last segment of the section played once: through its first ending only."""
        return self.e1[1] if self.e1 else self.end


class Structure:
    """Cuts the tune into sections at its repeat signs (and lost double bars), reporting
    structure problems.

    Bar-line group b follows segment b, so a section boundary at group b means the section
    ends with segment b and the next one starts with segment b + 1. Pickups (the tune's, the
    second halves of split bars, short bars after a repeat sign) are not bars when counting a
    section's or ending's bars.
    """

    def __init__(self, scan: Scan, pickups: set[int], breaks: set[int], problems: list):
        self.scan = scan
        self.breaks = breaks  # plain bar-line groups that stand for a lost double bar
        self.problems = problems
        # nonempty[j]: segments with notes among the first j, i.e. the written bar index of j;
        # counted[j]: the same without pickups.
        self.nonempty = [0]
        self.counted = [0]
        for j, n in enumerate(scan.elements):
            self.nonempty.append(self.nonempty[-1] + (n > 0))
            self.counted.append(self.counted[-1] + (n > 0 and j not in pickups))
        self.sections: list[Section] = []
        self.cur = Section(start=0)

    def run(self) -> list[Section]:
        for b, (first_token, bar_tokens) in enumerate(self.scan.groups):
            cur = self.cur
            if cur.phase == _E2 and self.count(cur.e2_start, b) >= self.count(*cur.e1):
                self.close(b)  # the second ending is as long as the first: it is over
            if b in self.breaks:
                self.double_bar(b)
                continue
            for offset, t in enumerate(bar_tokens):
                getattr(self, _BAR_ACTION[t])(b, first_token + offset)
        self.finish(len(self.scan.ticks) - 1)
        return self.sections

    def count(self, first: int, last: int) -> int:
        """Segments with notes in [first, last], pickups left out."""
        if last < first:
            return 0
        return self.counted[last + 1] - self.counted[first]

    def report(self, code: str, segment: int, token: int, message: str) -> None:
        self.problems.append(_problem(code, self.nonempty[segment], token, message))

    def close(self, b: int) -> None:
        """End the current section with segment b."""
        cur = self.cur
        if cur.phase == _E1:
            cur.e1 = (cur.e1[0], b)
        elif cur.phase == _E2:
            cur.e2 = (cur.e2_start, b)
        cur.end = b
        self.sections.append(cur)
        self.cur = Section(start=b + 1)

    def bar(self, b: int, i: int) -> None:
        pass

    def double_bar(self, b: int) -> None:
        """A section boundary the tokens lost (``||`` became ``|``): like a written one, it
        ends a second ending or a section that no open ``|:`` holds together."""
        cur = self.cur
        if cur.phase == _E2 or (cur.phase == _BODY and cur.opened_at < 0 and self.count(cur.start, b)):
            self.close(b)

    def end_repeat(self, b: int, i: int) -> None:
        cur = self.cur
        if cur.phase == _BODY:
            if self.count(cur.start, b):
                cur.repeats = True
                self.close(b)
            else:
                self.report("unmatched_repeat_end", b + 1, i, ":| with nothing to repeat")
        elif cur.phase == _E1:
            cur.e1 = (cur.e1[0], b)
            cur.phase = _E1_DONE
            cur.repeats = True
        elif cur.phase == _E1_DONE:
            self.report("unmatched_repeat_end", b + 1, i, "a second :| after a first ending")
        else:
            self.report("unmatched_repeat_end", b + 1, i, ":| inside a second ending")
            self.close(b)

    def first_ending(self, b: int, i: int) -> None:
        if self.cur.phase == _E2:  # a new section with endings, not opened by |:
            self.close(b)
        cur = self.cur
        if cur.phase == _BODY:
            cur.phase, cur.e1_token, cur.e1 = _E1, i, (b + 1, b)
        else:
            self.report("unmatched_ending", b + 1, i, "|1 inside a first ending")

    def second_ending(self, b: int, i: int) -> None:
        cur = self.cur
        if cur.phase == _E1:
            self.report("ending_without_repeat", b + 1, i, "first ending not closed by :| before |2")
            cur.e1 = (cur.e1[0], b)
        elif cur.phase != _E1_DONE:
            self.report("unmatched_ending", b + 1, i, "|2 without a |1 before it")
            return
        cur.phase, cur.e2_start = _E2, b + 1

    def start_repeat(self, b: int, i: int) -> None:
        cur = self.cur
        if cur.phase in (_E1, _E1_DONE):
            self.report("unmatched_ending", b + 1, cur.e1_token, "|1 without a |2 before the next |:")
            self.close(b)
        elif cur.phase == _E2 or self.count(cur.start, b):
            if cur.phase == _BODY and cur.opened_at >= 0:
                self.report("unclosed_repeat", cur.start, cur.opened_at, "|: never closed by :|")
            self.close(b)
        # else: nothing but a pickup so far, which belongs to the section this |: opens
        self.cur.opened_at = i

    def finish(self, b: int) -> None:
        cur = self.cur
        if cur.phase == _BODY and not self.count(cur.start, b):
            if cur.opened_at >= 0:
                self.report("unclosed_repeat", b + 1, cur.opened_at, "|: with no music after it")
            return
        if cur.phase in (_E1, _E1_DONE):
            self.report("unmatched_ending", cur.start, cur.e1_token, "|1 without a |2")
        elif cur.phase == _BODY and cur.opened_at >= 0:
            self.report("unclosed_repeat", cur.start, cur.opened_at, "|: never closed by :|")
        self.close(b)


_BAR_ACTION = {"|": "bar", ":|": "end_repeat", "|1": "first_ending", "|2": "second_ending",
               "|:": "start_repeat"}
assert set(_BAR_ACTION) == BAR_TOKENS, "bar-line table out of step with folkrnn.schemas.vocab"


# --- Bar lengths ---------------------------------------------------------------------------------
def _splits(groups: list, a: int, c: int) -> bool:
    """Whether the bar lines between segments a and c cut a bar in two at a repeat sign."""
    signs = {t for g in range(a, c) for t in groups[g][1]}
    return bool(signs & {":|", "|:"}) and not signs & {"|1", "|2"}


def find_lead_ins(scan: Scan, with_notes: list[int], full: int) -> set[int]:
    """Short bars right after a repeat sign (not an ending), the last bar excepted: a section's
    pickup, which needs no completion any more than the tune's does (``g4 :| |: B4 | e2ef``)."""
    return {f for f in with_notes[1:-1] if scan.ticks[f] < full and _splits(scan.groups, f - 1, f)}


def _last_with_notes(scan: Scan, first: int, last: int) -> int:
    for j in range(last, first - 1, -1):
        if scan.elements[j]:
            return j
    return -1


def split_at_plain_bars(scan: Scan, with_notes: list[int], full: int) -> dict[int, int]:
    """{a: c} for short bars a, c either side of a plain bar line that add up to one full bar,
    with a full bar before a and after c.

    That is a bar split by a section boundary whose double bar the tokens cannot show (the
    ingest writes ``||`` as ``|``, e.g. ``... d2 z || A | ...``): the second half is the next
    section's pickup. The full neighbours keep it from excusing a tune barred in half bars,
    a misplaced bar line after the pickup, or a short last bar.
    """
    ticks = scan.ticks
    out = {}
    for before, a, c, after in zip(with_notes, with_notes[1:], with_notes[2:], with_notes[3:]):
        if (ticks[before] == full and ticks[after] == full and c == a + 1
                and ticks[a] < full and ticks[c] < full and ticks[a] + ticks[c] == full
                and scan.groups[a][1] == ["|"]):
            out[a] = c
    return out


def classify_bars(
    scan: Scan, sections: list[Section], full: int, pickup: int, split: dict[int, int], lead_ins: set[int]
) -> tuple[set[int], set[int]]:
    """(segments too short, segments that are pickups) by the rules of the module docstring.

    A short bar is fine when it is the tune's first (the pickup); when it and its neighbour
    across a repeat sign, or across a lost double bar (``split``), make one full bar (the
    second half is then a pickup); when it starts a section right after a repeat sign; when it
    ends a section (or an ending) and completes the tune's pickup or a section's first bar;
    or when it starts a section and such an end completes it.
    """
    ticks = scan.ticks
    with_notes = [j for j, n in enumerate(scan.elements) if n]
    short = {j for j in with_notes if ticks[j] < full}
    pickups = set()
    if pickup >= 0:
        short.discard(pickup)
        pickups.add(pickup)
    for a, c in split.items():
        short -= {a, c}
        pickups.add(c)
    for a, c in zip(with_notes, with_notes[1:]):
        if a in short and c in short and ticks[a] + ticks[c] == full and _splits(scan.groups, a, c):
            short -= {a, c}
            pickups.add(c)
    firsts = [next((j for j in with_notes if s.start <= j <= s.end), -1) for s in sections]
    ends = [_section_ends(scan, s) for s in sections]
    for si, f in enumerate(firsts):
        candidates = ends[si] + (ends[si - 1] if si else [])
        if f in short and (f in lead_ins or any(e != f and ticks[e] + ticks[f] == full for e in candidates)):
            short.discard(f)
            pickups.add(f)
    for si, section_ends in enumerate(ends):
        starts = [pickup, firsts[si], firsts[si + 1] if si + 1 < len(firsts) else -1]
        lengths = {ticks[f] for f in starts if f >= 0 and ticks[f] < full}
        for e in section_ends:
            if e in short and any(ticks[e] + p == full for p in lengths if e not in starts):
                short.discard(e)
    return short, pickups


def _section_ends(scan: Scan, section: Section) -> list[int]:
    """The last bars of a section as played: the end of its first and of its second ending."""
    ends = [_last_with_notes(scan, section.start, section.played_end)]
    if section.e2:
        ends.append(_last_with_notes(scan, *section.e2))
    return [e for e in ends if e >= 0]

