"""Well-formed by construction: the grammar that ``--well-formed`` sampling applies as a mask.

Every row of a batch carries a small state in tensors (where the bar is, what the element just
written may still take, the repeat structure, the tune's pickup). ``allowed`` turns it into a
(rows x 137) mask by table lookups, ``advance`` moves it by one token: no per-tune Python work,
the same code on CPU and CUDA. A token is allowed only if the tune can still be ended after it
within the token budget, by a plan (fill the bar with the fewest notes, close what is open, end)
whose every token the mask allows in turn; so no row ever reaches a dead end, every tune ends
with ``</s>``, and every tune passes ``folkrnn.transforms.validator.validate_tokens``.

The grammar is the validator's rules (rhythm from ``folkrnn.schemas.music``), stricter where that
keeps the state small; never looser:

* Lengths live on a grid of ``G = 96`` units to the eighth, which every length below hits exactly.
* A note or rest may take one duration token, then a broken rhythm (``>``, ``2<``, or ``/2>`` with
  its fused duration when it had none); the broken rhythm's second note is a note or rest that may
  take a duration, no further broken rhythm. A chord holds 1-4 pitches without durations and may
  take a duration after ``]``. A ``(p`` tuplet holds p notes or rests without durations.
* Every bar is full, except: the tune's first bar (a pickup: another bar must follow); a section's
  first bar right after a repeat sign that is no ending (a lead-in, likewise; if a plain ``|``
  closes it, a full bar follows); and a section's last bar, closed by ``:|`` or by the end, that
  completes the tune's pickup or its section's short first bar.
* Repeats and endings follow the validator's section machine: ``:|`` needs a counted bar in its
  section, ``|:`` may not leave an opened section behind, ``|1`` needs a counted bar before it, the
  ``:|`` that ends a first ending is followed at once by ``|2``, the end leaves nothing open. A bar
  line is one token, or ``:|`` followed by ``|:`` or ``|2``.
* A ``Form`` (``--form AABB --bars-per-part 8``): parts in order, each repeated (``:|``) or not,
  each closed after exactly its number of counted bars (pickups and lead-ins do not count), no
  endings.

Why one module of about 550 lines: the state's fields, the mask built from them and the move by one
token are one machine; split apart, each half would have to re-state the other's invariants.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from folkrnn.schemas.music import (
    BROKEN_RHYTHMS,
    COMPOUND_METERS,
    DURATIONS,
    TOKEN_KIND,
    TUPLET_NOTES,
    tuplet_q,
)
from folkrnn.schemas.vocab import METERS, TOKENS

G = 96  # grid units to the eighth
CHORD_MAX = 4
INF = 1 << 30  # the cost of no plan

PITCH, REST, OPEN, CLOSE, DUR, BROKEN, TUPLET, BAR, METER, MODE, START, END = range(12)
_KIND = {"pitch": PITCH, "rest": REST, "chord_open": OPEN, "chord_close": CLOSE, "duration": DUR,
         "broken": BROKEN, "tuplet": TUPLET, "bar": BAR, "meter": METER, "mode": MODE, "start": START, "end": END}
BAR_TOKENS = ("|", "|:", ":|", "|1", "|2")
PLAIN, OPEN_REPEAT, CLOSE_REPEAT, FIRST_ENDING, SECOND_ENDING = range(5)
BODY, E1, E1_DONE, E2 = range(4)  # where the section is (the validator's Structure phases)
# What the element just written may still take: a duration (NOTE, CHORD, SECOND), a broken rhythm (NOTE, NOTE_DUR).
EL_NONE, EL_NOTE, EL_NOTE_DUR, EL_CHORD, EL_SECOND = range(5)
# A note's possible lengths: as written (x1, no token) or times a duration token (one token more).
MULTIPLIERS = [(1, 1, 0)] + [(f.numerator, f.denominator, 1) for f in DURATIONS.values()]
# A new note's length before its duration: an eighth, or (the second note of a broken rhythm) 1/4,
# 1/2, 3/2 or 7/4 of one; index 0 also stands for "no broken rhythm waiting".
NOTE_BASES = (G, G // 4, G // 2, 3 * G // 2, 7 * G // 4)


@dataclass(frozen=True)
class Form:
    """A structure to ask for: parts in order, each repeated or not, each with its number of bars."""

    repeated: tuple[bool, ...]
    bars: tuple[int, ...]

    @classmethod
    def parse(cls, letters: str, bars_per_part: int | list[int] | tuple[int, ...] = 8) -> Form:
        """``"AABB"`` with 8 (or ``[8, 8]``); ValueError saying why for a form the tokens cannot write."""
        letters = letters.strip().upper()
        if not letters.isalpha():
            raise ValueError(f"form {letters!r}: give part letters such as AABB")
        runs: list[list] = []
        for letter in letters:
            if runs and runs[-1][0] == letter:
                runs[-1][1] += 1
            else:
                runs.append([letter, 1])
        expected = "".join(chr(ord("A") + i) for i in range(len(runs)))
        if "".join(r[0] for r in runs) != expected:
            raise ValueError(f"form {letters!r}: parts must be new letters in order ({expected})")
        if any(n > 2 for _, n in runs):
            raise ValueError(f"form {letters!r}: a part is played once or twice (AABB, AAB, ABB ...)")
        repeated = tuple(n == 2 for _, n in runs)
        if any(not a and not b for a, b in zip(repeated, repeated[1:])):
            raise ValueError(f"form {letters!r}: two parts played once in a row have no sign between them in "
                             "the vocabulary; repeat one of them")
        counts = [bars_per_part] * len(runs) if isinstance(bars_per_part, int) else list(bars_per_part)
        if len(counts) != len(runs) or any(not 1 <= n <= 64 for n in counts):
            raise ValueError(f"bars per part: give one number (1-64) or one for each of the {len(runs)} parts")
        return cls(repeated, tuple(counts))


def min_fill(longest: int) -> list[int]:
    """Fewest tokens that fill exactly r grid units with notes (a pitch, maybe a duration); INF if none."""
    best = [0] + [INF] * longest
    options = [(G * num // den, 1 + extra) for num, den, extra in MULTIPLIERS]
    for r in range(1, longest + 1):
        best[r] = min((best[r - length] + cost for length, cost in options if length <= r), default=INF)
    return best


@dataclass
class State:
    """One row per tune; every field a (rows,) int64 tensor (flags are 0 or 1)."""

    phase: torch.Tensor  # 0: meter next, 1: mode next, 2: body, 3: ended
    full: torch.Tensor  # grid units of a full bar
    compound: torch.Tensor
    pos: torch.Tensor  # grid units of the bar so far, the last element at its length so far
    elems: torch.Tensor  # notes, rests and chords in the bar
    el: torch.Tensor  # EL_*: what the last element may still take
    base: torch.Tensor  # the last element's length before a duration token
    length: torch.Tensor  # the last element's length now
    second4: torch.Tensor  # 4 x the factor a broken rhythm gives the next note; 0: none waiting
    tuplet_left: torch.Tensor  # notes the open tuplet still needs
    chord: torch.Tensor  # 1 + pitches of the open chord; 0: no chord open
    group: torch.Tensor  # bar tokens just written in a row (the bar line so far); 0: none
    last_bar: torch.Tensor  # the last bar token's code
    group_repeat: torch.Tensor  # the last bar line holds :| or |:
    group_ending: torch.Tensor  # the last bar line holds |1 or |2
    next_full: torch.Tensor  # the bar under way must be full
    need_more: torch.Tensor  # another bar with notes must come (after a pickup or lead-in)
    bars: torch.Tensor  # bars with notes so far
    pickup: torch.Tensor  # grid units of the tune's pickup; 0: none
    sec_first: torch.Tensor  # grid units of the section's first bar if it was short; 0: none
    sec_bars: torch.Tensor  # bars with notes in the section
    sec_counted: torch.Tensor  # bars of the section that count (no pickup, no lead-in)
    sphase: torch.Tensor  # BODY, E1, E1_DONE, E2
    opened: torch.Tensor  # the section was opened by |:
    e1: torch.Tensor  # counted bars of the first ending
    e2: torch.Tensor  # counted bars of the second ending
    part: torch.Tensor  # with a Form: the part under way

    @staticmethod
    def zeros(rows: int, device: torch.device) -> State:
        """A new state whose fields are the rows of one (fields x rows) matrix, ``data``: a whole
        state is then written in one operation."""
        data = torch.zeros(len(FIELDS), rows, dtype=torch.int64, device=device)
        state = State(*data.unbind(0))
        state.data = data
        return state

    def stacked(self) -> torch.Tensor:
        return torch.stack([getattr(self, name) for name in FIELDS])

    def reset(self, rows: torch.Tensor) -> None:
        """Start these rows on a new tune."""
        self.data[:, rows] = 0

    def select(self, rows: torch.Tensor) -> State:
        """A new state of only these rows, in this order (the sampler shrinks its batch with it)."""
        data = self.data.index_select(1, rows)
        state = State(*data.unbind(0))
        state.data = data
        return state

    def view(self) -> State:
        """A State sharing this one's tensors: fields are then replaced, never written in place."""
        return State(*[getattr(self, f.name) for f in fields(self)])


FIELDS = tuple(f.name for f in fields(State))
# The per-token tables ``advance`` reads (the last two: a tuplet's time in simple and compound meters).
TOKEN_TABLES = ("kind", "bar_code", "full_of", "compound_of", "dur_num", "dur_den", "fused", "fused_num", "fused_den",
                "first_num", "first_den", "second4", "tuplet_p", "tuplet_time1", "tuplet_time0")


class Grammar:
    """The grammar's tables on one device; ``allowed`` and ``advance`` for a batch of rows."""

    def __init__(self, device: str | torch.device = "cpu", form: Form | None = None):
        self.device = dev = torch.device(device)
        self.form = form
        self._afters: tuple | None = None  # (state, its states after each bar token), from ``allowed``

        def table(values: dict, default: int = 0) -> torch.Tensor:
            return torch.tensor([values.get(t, default) for t in TOKENS], dtype=torch.int64, device=dev)

        broken = BROKEN_RHYTHMS
        self.kind = table({t: _KIND[k] for t, k in TOKEN_KIND.items()})
        self.dur_num = table({t: f.numerator for t, f in DURATIONS.items()}, 1)
        self.dur_den = table({t: f.denominator for t, f in DURATIONS.items()}, 1)
        self.tuplet_p = table(TUPLET_NOTES)
        self.fused = table({t: 1 for t, r in broken.items() if r.fused})
        self.fused_num = table({t: r.fused.numerator for t, r in broken.items() if r.fused}, 1)
        self.fused_den = table({t: r.fused.denominator for t, r in broken.items() if r.fused}, 1)
        self.first_num = table({t: r.first.numerator for t, r in broken.items()}, 1)
        self.first_den = table({t: r.first.denominator for t, r in broken.items()}, 1)
        self.second4 = table({t: int(r.second * 4) for t, r in broken.items()})
        self.bar_code = table({t: i for i, t in enumerate(BAR_TOKENS)}, -1)
        self.full_of = table({f"M:{m}": 8 * G * int(m.split("/")[0]) // int(m.split("/")[1]) for m in METERS})
        self.compound_of = table({f"M:{m}": 1 for m in COMPOUND_METERS})
        self.tuplet_time = {c: table({t: tuplet_q(p, c) * G for t, p in TUPLET_NOTES.items()}) for c in (0, 1)}
        self.token_tables = torch.stack([getattr(self, name) for name in TOKEN_TABLES[:-2]]
                                        + [self.tuplet_time[1], self.tuplet_time[0]], 1)  # (137 x tables)
        self.longest = int(self.full_of.max())
        # Plans as table lookups, indexed by the gap to a full bar (+ OFFSET: a gap below 0 has no plan):
        # fill[g]: fewest tokens that fill g grid units; after_note[b, g]: the same once a note of the
        # b-th base length is written, at its cheapest length (as written, or with a duration token).
        fill = min_fill(self.longest)
        self.offset = off = 2 * self.longest
        self.fill = torch.tensor([INF] * off + fill, dtype=torch.int64, device=dev)
        after = [[min((extra + (fill[gap - base * num // den] if 0 <= gap - base * num // den else INF)
                       for num, den, extra in MULTIPLIERS)) for gap in range(-off, self.longest + 1)]
                 for base in NOTE_BASES]
        self.after_note = torch.tensor(after, dtype=torch.int64, device=dev).clamp(max=INF)
        self.base_index = torch.tensor([NOTE_BASES.index(G * k // 4) if k in (1, 2, 6, 7) else 0 for k in range(8)],
                                       device=dev)
        self.ids = {k: torch.nonzero(self.kind == k).squeeze(1) for k in range(12)}
        self.bar_ids = [TOKENS.index(t) for t in BAR_TOKENS]
        self.codes = torch.arange(len(BAR_TOKENS), device=dev).unsqueeze(1)  # (5, 1): a row per bar token
        self.is_code = [self.codes == code for code in range(len(BAR_TOKENS))]
        # what ``allowed`` looks up for the tokens of one kind, as (1 x tokens of that kind) rows
        t_ids, d_ids, b_ids = self.ids[TUPLET], self.ids[DUR], self.ids[BROKEN]
        self.tuplet_times = [self.tuplet_time[c][t_ids].unsqueeze(0) for c in (0, 1)]
        self.tuplet_ps = self.tuplet_p[t_ids].unsqueeze(0)
        self.dur_nums, self.dur_dens = self.dur_num[d_ids].unsqueeze(0), self.dur_den[d_ids].unsqueeze(0)
        self.broken_fused = (self.fused[b_ids] == 1).unsqueeze(0)
        self.broken_fused_nums = self.fused_num[b_ids].unsqueeze(0)
        self.broken_fused_dens = self.fused_den[b_ids].unsqueeze(0)
        self.broken_first_nums = self.first_num[b_ids].unsqueeze(0)
        self.broken_first_dens = self.first_den[b_ids].unsqueeze(0)
        self.broken_second_bases = self.base_index[self.second4[b_ids]].unsqueeze(0)
        # the mask's columns: one per kind allowed as a whole (pitches, rests, [, ], modes, </s>, and a
        # never-allowed one for <s>), then one per meter, tuplet, duration, broken rhythm and bar token
        kind_columns = {PITCH: 0, REST: 1, OPEN: 2, CLOSE: 3, MODE: 4, END: 5, START: 6}
        per_token = [i for k in (METER, TUPLET, DUR, BROKEN) for i in self.ids[k].tolist()] + self.bar_ids
        column = {token: 7 + n for n, token in enumerate(per_token)}
        self.column_of_token = torch.tensor(
            [column.get(t, kind_columns.get(int(self.kind[t]))) for t in range(len(TOKENS))], device=dev)
        if form is not None:
            n = self.n_parts = len(form.bars)
            self.part_bars = torch.tensor(list(form.bars) + [0], device=dev)
            self.part_repeated = torch.tensor(list(form.repeated) + [False], device=dev)
            self.bars_after = torch.tensor([sum(form.bars[k + 1:]) for k in range(n)] + [0], device=dev)
            self.ends_repeated = int(form.repeated[-1])
        # 1 + the cheapest tune in each meter, after the meter token: (1 x meters)
        self.meter_plan = 1 + self._plan_from_body_start(self.full_of[self.ids[METER]]).unsqueeze(0)

    def start(self, rows: int) -> State:
        return State.zeros(rows, self.device)

    # -- bars: where the bar under way may end, and what finishing the tune costs ------------------
    def _bars(self, s: State) -> dict:
        """What this step's masks share: how the bar under way may close, and the cost of closing
        the tune once it is full."""
        after_repeat = (s.group_repeat == 1) & (s.group_ending == 0) & (s.bars > 0)
        lead_in = after_repeat & (s.sec_bars == 0) & (s.next_full == 0)
        short_ok = (s.bars == 0) | lead_in  # the tune's pickup, or a section's lead-in: any length
        # a section's last bar, closed by :| or the end, may complete the pickup or the section's short first bar
        ok = (s.bars > 0) & (s.sec_bars > 0) & ~after_repeat & (s.next_full == 0)
        if self.form is None:
            closing = torch.where(s.sphase == E1, 3, torch.where((s.sphase == BODY) & (s.opened == 1), 2, 1))
        else:
            k = s.part.clamp(max=self.n_parts)
            ok &= (s.sec_counted + 1 == self.part_bars[k]) & (self.part_repeated[k] | (k == self.n_parts - 1))
            later = (self.part_bars[k] - s.sec_counted - 1).clamp(min=0) + self.bars_after[k]
            closing = later * (torch.take(self.fill, self.offset + s.full) + 1) + 1 + self.ends_repeated
        notes = s.elems > 0
        short = notes & (s.pos < s.full)
        completes = short & ~short_ok & (((ok & (s.pickup > 0)) & (s.pos == s.full - s.pickup))
                                         | ((ok & (s.sec_first > 0)) & (s.pos == s.full - s.sec_first)))
        full_bar = notes & (s.pos == s.full)
        free_short = short & short_ok
        return {"closing": closing, "full_bar": full_bar, "free_short": free_short, "completes": completes,
                "notes": notes, "gap": s.full - s.pos}

    def _plan(self, b: dict, gap: torch.Tensor, extra) -> torch.Tensor:
        """Tokens to end the tune from ``gap`` grid units short of a full bar (rows, k), after ``extra``
        tokens that finish the element under way: fill the bar with the fewest notes, then close."""
        index = (gap + self.offset).clamp(0, self.offset + self.longest)
        return torch.take(self.fill, index) + b["closing"].unsqueeze(1) + extra

    def _plan_after_note(self, b: dict, gap: torch.Tensor, base: torch.Tensor, extra) -> torch.Tensor:
        """``_plan`` for a note of base length number ``base`` (NOTE_BASES) written ``gap`` short of
        a full bar, at its cheapest length."""
        index = base * self.after_note.shape[1] + (gap + self.offset).clamp(0, self.offset + self.longest)
        return torch.take(self.after_note, index) + b["closing"].unsqueeze(1) + extra

    def _bar_lines(self, s: State, b: dict) -> tuple[torch.Tensor, State]:
        """(ok, after) for the five bar tokens at once, each a row of a (5 x rows) computation: the bar
        under way closes (at the first token of a bar line), then the validator's section machine
        acts. ``after`` is the State after each token, its fields (5 x rows) or broadcastable to it."""
        is_plain, is_open, is_close, is_first, is_second = self.is_code
        start = s.group == 0
        notes = b["notes"] & start
        # may close: an empty bar at the start, a full bar, a pickup or lead-in, a completion (only by :|)
        completes = b["completes"] & is_close
        may_close = (~b["notes"] & (s.bars == 0)) | b["full_bar"] | b["free_short"] | completes
        counted = (b["full_bar"] | completes) & start
        add = counted.long()
        sec_counted = s.sec_counted + add
        e1 = s.e1 + add * (s.sphase == E1)
        e2 = s.e2 + add * (s.sphase == E2)
        sec_bars = s.sec_bars + notes.long()
        sec_first = torch.where(notes & (s.sec_bars == 0) & (s.pos < s.full), s.pos, s.sec_first)
        section = (s.sphase, s.opened, sec_counted, e1, e2, sec_bars, sec_first)
        # the second ending ends once it is as long as the first
        closed = start & (s.sphase == E2) & (e2 >= e1)
        ph, opened, count, e1, e2, sec_bars, sec_first = (torch.where(closed, 0, x) for x in section)
        body = (ph == BODY) & (count > 0)
        follows = start | ((s.last_bar == CLOSE_REPEAT) & (s.group == 1))
        ok = torch.where(is_plain, start & (ph != E1_DONE), start & body)  # |1 as the last case
        ok = torch.where(is_close, start & (body | ((ph == E1) & (e1 > 0))), ok)
        ok = torch.where(is_open, follows & ((ph == E2) | (ph == BODY)) & ~(body & (opened == 1)), ok)
        ok = torch.where(is_second, (ph == E1_DONE) & (s.group == 1) & (s.last_bar == CLOSE_REPEAT), ok)
        sphase = torch.where(is_close & ok & (ph == E1), E1_DONE, ph)
        sphase = torch.where(is_first & ok, E1, torch.where(is_second & ok, E2, sphase))
        # :| closes its section, and so does |: after a section with bars
        shut = ok & ((is_close & body) | (is_open & ((ph == E2) | body)))
        closed = closed | shut
        section = (sphase, opened, count, e1, e2, sec_bars, sec_first)
        sphase, opened, count, e1, e2, sec_bars, sec_first = (torch.where(shut, 0, x) for x in section)
        opened = torch.where(is_open & ok, 1, opened)
        ok = ok & (may_close | ~start)
        part = s.part
        if self.form is not None:
            ok = ok & self._form_ok(s, counted, closed)
            part = s.part + (closed & (is_close | is_open)).long()
        zero = torch.zeros_like(s.pos)
        after = State(
            phase=s.phase, full=s.full, compound=s.compound, pos=zero, elems=zero, el=zero, base=zero,
            length=zero, second4=s.second4, tuplet_left=s.tuplet_left, chord=s.chord, group=s.group + 1,
            last_bar=self.codes,
            group_repeat=torch.where(start, 0, s.group_repeat) | (is_open | is_close).long(),
            group_ending=torch.where(start, 0, s.group_ending) | (is_first | is_second).long(),
            next_full=torch.where(start, (b["free_short"] & (s.bars > 0) & is_plain).long(), s.next_full),
            need_more=torch.where(notes, b["free_short"].long(), s.need_more), bars=s.bars + notes.long(),
            pickup=torch.where(notes & (s.bars == 0) & (s.pos < s.full), s.pos, s.pickup),
            sec_first=sec_first, sec_bars=sec_bars, sec_counted=count, sphase=sphase, opened=opened, e1=e1,
            e2=e2, part=part)
        return ok, after

    def _form_ok(self, s: State, counted: torch.Tensor, closed: torch.Tensor) -> torch.Tensor:
        """(5 x rows): the bar tokens a Form allows: a part closes after exactly its bars, by :| if
        it is repeated, by |: if it is played once before a repeated part; no endings."""
        is_plain, is_open, is_close, _, _ = self.is_code
        k = s.part.clamp(max=self.n_parts)
        done = s.sec_counted + counted.long() >= self.part_bars[k]
        repeated = self.part_repeated[k]
        live = k < self.n_parts
        next_repeated = self.part_repeated[(k + 1).clamp(max=self.n_parts)]
        ok = torch.where(is_plain, ~(done & counted), is_open & ((~closed & repeated & live)
                                                                | (closed & ~repeated & done & next_repeated)))
        return torch.where(is_close, repeated & done & live, ok)

    def _plan_from_body_start(self, full: torch.Tensor) -> torch.Tensor:
        """Tokens of the cheapest tune body in a meter of ``full`` grid units a bar, ``</s>`` included."""
        bars = sum(self.form.bars) if self.form is not None else 1
        extra = self.ends_repeated if self.form is not None else 0
        return bars * (self.fill[self.offset + full] + 1) + extra

    def check_prime(self, tokens: list[str], max_tokens: int) -> torch.Tensor:
        """(len(tokens) x 137) bool: what each prime position may hold: its token, or for a ``*`` in
        the header the meters (modes) with which the rest of the prime keeps to the grammar.
        ValueError when the prime cannot start a well-formed tune within ``max_tokens``."""
        if "*" in tokens[2:]:
            raise ValueError("a prime for well-formed sampling may leave only its meter and mode to the model (*)")
        options = torch.zeros(len(tokens), len(TOKENS), dtype=torch.bool, device=self.device)
        meters = [m for m in self.ids[METER].tolist()] if tokens[:1] == ["*"] else [None]
        problems = []
        for meter in meters:
            concrete = ([TOKENS[meter]] if meter is not None else tokens[:1]) + [
                "K:Cmaj" if t == "*" else t for t in tokens[1:]]
            problem = self._prime_problem(concrete, max_tokens)
            if problem is None:
                if meter is not None:
                    options[0, meter] = True
            else:
                problems.append(problem)
        if len(problems) == len(meters):
            raise ValueError(problems[0])
        for position, token in enumerate(tokens):
            if token != "*":
                options[position, TOKENS.index(token)] = True
        if len(tokens) > 1 and tokens[1] == "*":
            options[1, self.ids[MODE]] = True
        return options

    def _prime_problem(self, tokens: list[str], max_tokens: int) -> str | None:
        state = self.start(1)
        for step, token in enumerate(tokens):
            allowed = self.allowed(state, torch.tensor([step], device=self.device), max_tokens)[0]
            if not bool(allowed[TOKENS.index(token)]):
                return (f"the prime is not well-formed at its token {step + 1} ({token}): a tune that starts so "
                        "cannot end valid" + (" within max_tokens" if allowed.any() else ""))
            self.advance(state, torch.tensor([TOKENS.index(token)], device=self.device))
        if not bool(self.allowed(state, torch.tensor([len(tokens)], device=self.device), max_tokens).any()):
            return f"max_tokens {max_tokens} leaves no room to end a well-formed tune after the prime"
        return None

    def _plan_at_bar_start(self, s: State) -> torch.Tensor:
        """(rows,): tokens to end the tune from an empty bar (right after a bar line): ``</s>`` if
        it may come, else a full bar and what closes the tune."""
        if self.form is None:
            closing = torch.where(s.sphase == E1, 3, torch.where((s.sphase == BODY) & (s.opened == 1), 2, 1))
            end = s.bars > 0
        else:
            k = s.part.clamp(max=self.n_parts)
            later = (self.part_bars[k] - s.sec_counted - 1).clamp(min=0) + self.bars_after[k]
            closing = torch.where(k >= self.n_parts, INF, later * (torch.take(self.fill, self.offset + s.full) + 1) + 1
                                  + self.ends_repeated)
            end = k >= self.n_parts
        plan = torch.take(self.fill, self.offset + s.full) + closing
        plan = torch.where(s.sphase == E1_DONE, 2, plan)  # |2 </s>
        end = end & (s.need_more == 0) & (((s.sphase == BODY) & (s.opened == 0)) | (s.sphase == E2))
        return torch.where(end, 1, plan)

    def _end_ok(self, s: State, b: dict) -> torch.Tensor:
        """Rows that may end now: nothing open, the last bar right, the structure closed."""
        notes = b["notes"]
        # the last bar: empty after a bar line, full, or completing the pickup or the section's first bar
        counted = b["full_bar"] | b["completes"]
        may_close = (~notes & (s.bars > 0)) | counted
        free = (s.phase == 2) & (s.chord == 0) & (s.tuplet_left == 0) & (s.second4 == 0)
        some = (s.bars > 0) | notes
        structure = ((s.sphase == BODY) & (s.opened == 0)) | (s.sphase == E2)
        ok = free & may_close & ~((s.need_more == 1) & ~notes) & some & structure
        if self.form is not None:
            k = s.part.clamp(max=self.n_parts)
            single_last = (k == self.n_parts - 1) & ~self.part_repeated[k] & (
                s.sec_counted + counted.long() == self.part_bars[k])
            ok &= ((k == self.n_parts) & ~notes) | single_last
        return ok

    # -- the mask ------------------------------------------------------------------------------------
    def allowed(self, s: State, steps: torch.Tensor, max_tokens: int) -> torch.Tensor:
        """(rows x 137) bool: the tokens each row may take now, ``steps`` tokens after ``<s>``."""
        b = self._bars(s)
        budget = (max_tokens - 1 - steps).unsqueeze(1)  # tokens that may follow this one, </s> included
        # the header: a meter and a mode, if the cheapest tune in that meter fits the budget
        meter = (s.phase == 0).unsqueeze(1) & (self.meter_plan <= budget)
        mode = (s.phase == 1) & (self._plan_from_body_start(s.full) <= budget.squeeze(1))
        body = s.phase == 2
        in_chord = body & (s.chord > 0)
        free = body & (s.chord == 0) & (s.tuplet_left == 0)
        pending = s.second4 > 0
        music = free & (s.sphase != E1_DONE)
        if self.form is not None:
            music &= s.part < self.n_parts
        gap = b["gap"].unsqueeze(1)
        zero = torch.zeros_like(gap)

        # inside a chord: up to CHORD_MAX pitches, then ] (and maybe a duration after it)
        after_chord = self._plan_after_note(b, gap + G, zero, 0)
        pitch = in_chord & (s.chord - 1 < CHORD_MAX) & (after_chord < budget).squeeze(1)
        close = (in_chord & (s.chord > 1)).unsqueeze(1) & (after_chord <= budget)
        # inside a tuplet: plain notes and rests, the bar already holds the tuplet's time
        tuplet_note = body & (s.chord == 0) & (s.tuplet_left > 0)
        note = tuplet_note & (self._plan(b, gap, s.tuplet_left.unsqueeze(1) - 1) <= budget).squeeze(1)
        # a note or rest (the second of a broken rhythm too), a chord, a tuplet
        base = self.base_index[s.second4].unsqueeze(1)
        note |= music & (self._plan_after_note(b, gap, base, 0) <= budget).squeeze(1)
        fresh = (music & ~pending).unsqueeze(1)
        chord = fresh & (self._plan_after_note(b, gap, zero, 2) <= budget)
        time = torch.where(s.compound.unsqueeze(1) == 1, self.tuplet_times[1], self.tuplet_times[0])
        tuplet = fresh & (self._plan(b, gap - time, self.tuplet_ps) <= budget)

        # a duration for the element just written
        can = free & (s.group == 0) & ((s.el == EL_NOTE) | (s.el == EL_CHORD) | (s.el == EL_SECOND))
        grown = s.base.unsqueeze(1) * self.dur_nums // self.dur_dens - s.length.unsqueeze(1)
        duration = can.unsqueeze(1) & (self._plan(b, gap - grown, 0) <= budget)

        # a broken rhythm: the first note rescaled now, the second note's factor waits
        fused = self.broken_fused
        first = torch.where(fused, s.base.unsqueeze(1) * self.broken_fused_nums // self.broken_fused_dens,
                            s.length.unsqueeze(1)) * self.broken_first_nums // self.broken_first_dens
        after_first = gap + s.length.unsqueeze(1) - first
        can = (free & ~pending & ((s.el == EL_NOTE) | (s.el == EL_NOTE_DUR))).unsqueeze(1)
        can = can & (~fused | (s.el == EL_NOTE).unsqueeze(1))
        broken = can & (self._plan_after_note(b, after_first, self.broken_second_bases, 1) <= budget)

        # bar lines and the end; the states after each bar token are kept for ``advance``
        ok, after = self._bar_lines(s, b)
        bars = (free & ~pending) & ok & (self._plan_at_bar_start(after) <= budget.squeeze(1))
        self._afters = (s, after)
        end = self._end_ok(s, b)
        # one (columns x rows) matrix in COLUMNS order, then a row per token: copying whole rows is
        # much faster than writing columns of a (rows x 137) mask
        never = torch.zeros_like(end)
        columns = torch.cat([torch.stack([pitch | note, note, chord.squeeze(1), close.squeeze(1), mode, end, never]),
                             meter.t(), tuplet.t(), duration.t(), broken.t(), bars])
        return columns.index_select(0, self.column_of_token).t()

    # -- one token -----------------------------------------------------------------------------------
    def advance(self, s: State, tokens: torch.Tensor) -> None:
        """Move every row's state by its token (in place); the token must have been allowed. Right
        after ``allowed`` on the same state, bar lines reuse the states it worked out."""
        # every table ``advance`` reads, looked up for the tokens in one copy of rows
        t = dict(zip(TOKEN_TABLES, self.token_tables.index_select(0, tokens).t()))
        kind = t["kind"]
        bar = (s.phase == 2) & (kind == BAR)
        if bool(bar.any()):  # bar lines: the bar closes, the section machine acts
            cached, self._afters = self._afters, None
            after = cached[1] if cached is not None and cached[0] is s else self._bar_lines(s, self._bars(s))[1]
            code = t["bar_code"].clamp(min=0).unsqueeze(0)  # (1, rows): the row of each token's code
            rows = code.shape[1]

            def chosen(field: torch.Tensor) -> torch.Tensor:  # a field that differs by bar token: its row
                return field if field.dim() == 1 else field.expand(len(BAR_TOKENS), rows).gather(0, code)[0]

            s.data.copy_(torch.where(bar, torch.stack([chosen(getattr(after, name)) for name in FIELDS]), s.data))
        self._afters = None
        n = s.view()
        header_meter = (s.phase == 0) & (kind == METER)
        n.full = torch.where(header_meter, t["full_of"], s.full)
        n.compound = torch.where(header_meter, t["compound_of"], s.compound)
        n.phase = torch.where(header_meter, 1, torch.where((s.phase == 1) & (kind == MODE), 2, s.phase))
        n.phase = torch.where(kind == END, 3, n.phase)
        body = s.phase == 2
        in_chord = body & (s.chord > 0)
        in_tuplet = body & (s.chord == 0) & (s.tuplet_left > 0)
        # chords: pitches inside, then ]
        closes = in_chord & (kind == CLOSE)
        n.chord = torch.where(closes, 0, torch.where(in_chord & (kind == PITCH), s.chord + 1, s.chord))
        el = torch.where(closes, EL_CHORD, s.el)
        # tuplet notes: their time is already in the bar
        tuplet_note = in_tuplet & ((kind == PITCH) | (kind == REST))
        n.tuplet_left = s.tuplet_left - tuplet_note.long()
        el = torch.where(tuplet_note, EL_NONE, el)
        # a new note, rest or chord
        starts = body & ~in_chord & ~in_tuplet & ((kind == PITCH) | (kind == REST) | (kind == OPEN))
        waiting = s.second4 > 0
        base = torch.where(waiting, s.second4 * (G // 4), G)
        pos = torch.where(starts, s.pos + base, s.pos)
        n.base = torch.where(starts, base, s.base)
        length = torch.where(starts, base, s.length)
        el = torch.where(starts, torch.where(kind == OPEN, EL_NONE, torch.where(waiting, EL_SECOND, EL_NOTE)), el)
        n.chord = torch.where(starts & (kind == OPEN), 1, n.chord)
        second4 = torch.where(starts, 0, s.second4)
        n.elems = s.elems + (starts | tuplet_note).long()
        # a duration rescales the element just written
        dur = body & (kind == DUR)
        new_length = s.base * t["dur_num"] // t["dur_den"]
        pos = torch.where(dur, s.pos - s.length + new_length, pos)
        length = torch.where(dur, new_length, length)
        el = torch.where(dur, torch.where(s.el == EL_NOTE, EL_NOTE_DUR, EL_NONE), el)
        # a broken rhythm rescales it and leaves a factor for the next note
        broken = body & (kind == BROKEN)
        first = torch.where(t["fused"] == 1, s.base * t["fused_num"] // t["fused_den"],
                            s.length) * t["first_num"] // t["first_den"]
        pos = torch.where(broken, s.pos - s.length + first, pos)
        n.second4 = torch.where(broken, t["second4"], second4)
        el = torch.where(broken, EL_NONE, el)
        # a tuplet reserves its time
        tuplet = body & (kind == TUPLET)
        time = torch.where(s.compound == 1, t["tuplet_time1"], t["tuplet_time0"])
        n.pos = torch.where(tuplet, s.pos + time, pos)
        n.tuplet_left = torch.where(tuplet, t["tuplet_p"], n.tuplet_left)
        n.el = torch.where(tuplet, EL_NONE, el)
        n.length = length
        n.group = torch.where(bar, s.group, 0)  # anything but a bar token ends a bar line
        s.data.copy_(n.stacked())
