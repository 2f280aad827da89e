"""Part 6, copying: for each generated tune, the longest run of tokens and of whole bars it shares
with any tune of the training corpus (the ingest's train split), so a user can see whether a tune
is new. Held-out human tunes (the ingest's valid split, never trained on) give the reference:
how much a new tune by a person shares with the corpus anyway.

The index is exact, with no hashing: every window of ``anchor`` tokens is packed into one 64-bit
key (token ids < 256, eight to a key; a bar is one id), the keys sorted once. For a query, each
window found in the corpus gives candidate (query start, corpus start) pairs, only those that
cannot be extended to the left, and the pairs are extended together one element at a time
until every one has hit a difference. Runs shorter than the anchor count as 0.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

from folkrnn.model.analysis.common import Context, Figure, Section, code, pct, pyplot
from folkrnn.schemas.errors import UsageError, setting
from folkrnn.schemas.vocab import BAR_TOKENS, METER_TOKENS, MODE_TOKENS, SPECIAL_TOKENS, TOKEN_TO_ID

SEPARATOR = -1  # between corpus sequences; never in a query
UNKNOWN = -2  # a query element the corpus does not have
BAR_IDS = frozenset(TOKEN_TO_ID[t] for t in BAR_TOKENS)
SKIP_IDS = frozenset(TOKEN_TO_ID[t] for t in METER_TOKENS | MODE_TOKENS | SPECIAL_TOKENS)


@dataclass
class Match:
    length: int  # 0 when no run of at least the anchor length exists
    query_start: int = -1
    sequence: int = -1  # index of the corpus sequence
    start: int = -1  # where the run starts in it


class RunIndex:
    """Exact longest common runs between a query and the sequences of a corpus (values >= 0)."""

    def __init__(self, sequences: list[np.ndarray], anchor: int):
        self.anchor = anchor
        self.bits = 64 // anchor
        parts, starts, at = [], [], 0
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            if len(seq) and (seq.min() < 0 or (anchor > 1 and seq.max() >= 1 << self.bits)):
                raise ValueError(f"values must be in [0, {1 << self.bits}) for anchor {anchor}")
            starts.append(at)
            parts += [seq, np.array([SEPARATOR])]
            at += len(seq) + 1
        self.values = np.concatenate(parts + [np.array([SEPARATOR])]) if parts else np.array([SEPARATOR])
        self.starts = np.array(starts, dtype=np.int64)
        keys, valid = self._keys(self.values)
        positions = np.nonzero(valid)[0]
        order = np.argsort(keys[positions], kind="stable")
        self.positions = positions[order]
        self.sorted_keys = keys[self.positions]

    def _keys(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed key and validity (no negative value) of every window of ``anchor`` values."""
        count = len(values) - self.anchor + 1
        if count <= 0:
            return np.zeros(0, np.uint64), np.zeros(0, bool)
        keys = np.zeros(count, np.uint64)
        valid = np.ones(count, bool)
        for j in range(self.anchor):
            window = values[j : j + count]
            valid &= window >= 0
            keys |= np.where(window >= 0, window, 0).astype(np.uint64) << np.uint64(self.bits * j)
        return keys, valid

    def longest(self, query) -> Match:
        """The longest run of ``query`` that also occurs in one corpus sequence."""
        q = np.asarray(query, dtype=np.int64)
        keys, valid = self._keys(q)
        lo = np.searchsorted(self.sorted_keys, keys, "left")
        hi = np.searchsorted(self.sorted_keys, keys, "right")
        counts = np.where(valid, hi - lo, 0)
        if counts.sum() == 0:
            return Match(0)
        qi = np.repeat(np.arange(len(keys)), counts)
        first = np.repeat(lo, counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cp = self.positions[first + offset]
        # Only pairs that start a maximal run: the element before differs (or there is none).
        left = (qi == 0) | (self.values[cp - 1] != q[np.maximum(qi - 1, 0)])
        qi, cp = qi[left], cp[left]
        length = self.anchor
        best = (qi[0], cp[0])
        while True:
            ahead = qi + length
            inside = ahead < len(q)
            same = np.zeros(len(qi), bool)
            same[inside] = q[ahead[inside]] == self.values[cp[inside] + length]
            if not same.any():
                break
            qi, cp = qi[same], cp[same]
            length += 1
            best = (qi[0], cp[0])
        sequence = int(np.searchsorted(self.starts, best[1], "right") - 1)
        return Match(length, int(best[0]), sequence, int(best[1] - self.starts[sequence]))


def bars_of(token_ids) -> list[tuple[int, ...]]:
    """The bars of a tune as tuples of token ids: the body cut at bar lines, empty pieces dropped."""
    bars, current = [], []
    for t in token_ids:
        t = int(t)
        if t in SKIP_IDS:
            continue
        if t in BAR_IDS:
            if current:
                bars.append(tuple(current))
            current = []
        else:
            current.append(t)
    if current:
        bars.append(tuple(current))
    return bars


class CopyIndex:
    """Token and bar indexes over a corpus of tunes (token id lists)."""

    def __init__(self, tunes: list, token_anchor: int = 8):
        self.bar_ids: dict[tuple[int, ...], int] = {}
        bar_sequences = []
        for ids in tunes:
            bar_sequences.append(np.array([self.bar_ids.setdefault(b, len(self.bar_ids)) for b in bars_of(ids)],
                                          dtype=np.int64))
        self.tokens = RunIndex([np.asarray(ids, dtype=np.int64) for ids in tunes], token_anchor)
        self.bars = RunIndex(bar_sequences, 1)

    def query(self, token_ids) -> tuple[Match, Match]:
        """(longest token run, longest bar run) of one tune."""
        bar_query = [self.bar_ids.get(b, UNKNOWN) for b in bars_of(token_ids)]
        return self.tokens.longest(np.asarray(token_ids, dtype=np.int64)), self.bars.longest(bar_query)


@dataclass
class Corpus:
    ids: list[str]
    titles: list[str]
    token_ids: list[np.ndarray]
    split: list[str]


class MissingCorpus(UsageError):
    """The copying part needs the training tunes (an ingest dataset) and has none."""


def load_corpus(ingest: str) -> Corpus:
    """The ingest's tunes (``ingest/tunes/part-*.parquet``): ids, titles, token ids, split."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(ingest, "tunes", "part-*.parquet")))
    if not files:
        raise MissingCorpus(f"no ingest dataset at {ingest} (tunes/part-*.parquet); run `folkrnn ingest` or "
                            f"give {setting('ingest')} DIR")
    corpus = Corpus([], [], [], [])
    for path in files:
        table = pq.read_table(path, columns=["id", "title", "token_ids", "split"])
        column = table.column("token_ids").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = column.offsets.to_numpy()
        offsets = offsets - offsets[0]  # flatten() starts at the array's first list
        corpus.token_ids += [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        corpus.ids += table.column("id").to_pylist()
        corpus.titles += [t or "" for t in table.column("title").to_pylist()]
        corpus.split += table.column("split").to_pylist()
    return corpus


def analyze(ctx: Context) -> Section:
    numbers = ctx.numbers
    section = Section("copying", "Copying")
    if not ctx.settings.ingest:
        raise MissingCorpus(f"no ingest dataset given ({setting('ingest')} DIR)")
    corpus = load_corpus(ctx.settings.ingest)
    train = [i for i, s in enumerate(corpus.split) if s == "train"]
    held_out = [i for i, s in enumerate(corpus.split) if s != "train"][: ctx.settings.num_tunes]
    ctx.log(f"indexing {len(train)} training tunes")
    index = CopyIndex([corpus.token_ids[i] for i in train], ctx.settings.copy_anchor)
    generated = ctx.baseline()
    results = {"generated": [index.query([TOKEN_TO_ID[t] for t in tokens]) for tokens in generated.tokens],
               "held_out": [index.query(corpus.token_ids[i]) for i in held_out]}
    anchor = ctx.settings.copy_anchor
    section.text.append(f"Index: {len(train)} training tunes of {ctx.settings.ingest} ({sum(len(corpus.token_ids[i]) for i in train):,} "
                        f"tokens). Compared: {len(generated.tokens)} generated tunes and {len(held_out)} held-out human "
                        f"tunes (the valid split). Runs shorter than {anchor} tokens count as 0.")
    summary = {}
    for group, matches in results.items():
        tokens = np.array([t.length for t, _ in matches])
        bars = np.array([b.length for _, b in matches])
        summary[group] = (tokens, bars)
        for name, values in (("token_run", tokens), ("bar_run", bars)):
            if len(values):
                numbers.add("copying", f"median_{name}", group, np.median(values))
                numbers.add("copying", f"max_{name}", group, values.max())
        if len(bars):
            numbers.add("copying", "share_with_8_bar_run", group, (bars >= 8).mean())
            numbers.add("copying", "share_with_4_bar_run", group, (bars >= 4).mean())
    for number, (t, b) in zip(generated.numbers, results["generated"]):
        numbers.add("copying", "tune_token_run", number, t.length)
        numbers.add("copying", "tune_bar_run", number, b.length)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
    for ax, which, unit in ((axes[0], 0, "tokens"), (axes[1], 1, "bars")):
        for group, color in (("generated", "tab:red"), ("held_out", "tab:gray")):
            values = np.sort(summary[group][which])
            if len(values):
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", color=color,
                        label=group.replace("_", "-out human tunes" if group == "held_out" else " tunes"))
        ax.set_xlabel(f"longest run shared with a training tune ({unit})")
        ax.set_ylabel("share of tunes at or below")
    axes[0].legend(fontsize=7)
    gen_t, gen_b = summary["generated"]
    held_b = summary["held_out"][1]
    held_text = (f"held-out human tunes: median {np.median(held_b):.0f} bars, {pct((held_b >= 8).mean())} with 8 or more"
                 if len(held_b) else "no held-out tunes to compare")
    section.figures.append(Figure(ctx.savefig(fig, "copying.png"), (
        f"How much of each tune already exists in the training corpus. Generated tunes share a median of "
        f"{np.median(gen_t):.0f} consecutive tokens and {np.median(gen_b):.0f} consecutive bars with some training "
        f"tune, and {pct((gen_b >= 8).mean())} share 8 or more bars (a whole part); {held_text}.")))
    rows = ["| generated tune | shared bars | shared tokens | training tune |", "|---:|---:|---:|---|"]
    ranked = sorted(zip(generated.numbers, results["generated"]), key=lambda x: (-x[1][1].length, -x[1][0].length))
    for number, (t, b) in ranked[:5]:
        match = b if b.length else t
        where = train[match.sequence] if match.sequence >= 0 else -1
        name = f"{code(corpus.ids[where])} {corpus.titles[where]}".replace("|", "\\|") if where >= 0 else "-"
        rows.append(f"| {number} | {b.length} | {t.length} | {name} |")
    section.table = "\n".join(rows)
    return section
