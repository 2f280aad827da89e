"""``folkrnn compare A B``: two datasets side by side, the comparison of the folk-rnn paper.

Sturm et al. compared the statistics of 30,000 generated and 23,000 training transcriptions;
this prints the same comparison for any two datasets (``part-*.parquet`` folders: an ingest's
``tunes/``, generated tunes, validated or not) and ``--plot`` draws it:

* tune lengths in tokens and in bars, meters, modes, forms (AABB ...);
* pitch tokens (chord notes included), as a share of all pitch tokens (the plot shows the
  2 x ``--top`` most common, low to high);
* written durations of notes, rests and chords, as a share of them ("1" is a note with no
  duration token: one eighth; broken rhythms and tuplets are not folded in);
* valid rate, ends on the tonic, standard form (AABB, 8 + 8 bars), reasons for rejection.

The findings stored in a dataset are used when it has them (run ``folkrnn validate`` to refresh
them); a dataset without them, or any with ``--revalidate``, is validated on the fly.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from folkrnn.schemas.errors import UsageError

HELP = "Compare two datasets (e.g. training vs generated): lengths, meters, modes, forms, pitches, durations, valid rates"
FINDINGS_USED = ("valid", "reasons", "form", "bar_count", "ends_on_tonic", "standard_form")
BATCH = 8192


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="first dataset: a folder of part-*.parquet shards (e.g. training tunes)")
    parser.add_argument("b", metavar="B", help="second dataset (e.g. generated tunes)")
    parser.add_argument("--names", nargs=2, default=None, metavar=("NAME_A", "NAME_B"),
                        help="what to call the datasets (default: their folder names)")
    parser.add_argument("--top", type=int, default=12, help="rows shown of forms, pitches, durations, reasons (12)")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the comparison as a PNG")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write both datasets' statistics as JSON")
    parser.add_argument("--revalidate", action="store_true",
                        help="validate every tune now instead of using stored findings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# --- Counting ------------------------------------------------------------------------------------
@dataclass
class DatasetStats:
    """Counts over one dataset's tunes; ``summary()`` turns them into shares and averages."""

    name: str
    tunes: int = 0
    valid: int = 0
    ends_on_tonic: int = 0
    standard_form: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens a tune
    bars: list[int] = field(default_factory=list)  # bars a tune, as played once
    meters: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    forms: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    pitches: Counter = field(default_factory=Counter)
    durations: Counter = field(default_factory=Counter)

    def add(self, tokens: list[str], findings: dict) -> None:
        from folkrnn.transforms.validator import meter_and_mode

        self.tunes += 1
        self.valid += bool(findings["valid"])
        self.ends_on_tonic += bool(findings["ends_on_tonic"])
        self.standard_form += bool(findings["standard_form"])
        self.lengths.append(len(tokens))
        self.bars.append(int(findings["bar_count"] or 0))
        meter, mode = meter_and_mode(tokens)
        self.meters[meter or "?"] += 1
        self.modes[mode or "?"] += 1
        self.forms[findings["form"] or "(none)"] += 1
        self.reasons.update(set(findings["reasons"] or []))
        count_notes(tokens, self.pitches, self.durations)

    def summary(self) -> dict:
        n = self.tunes or 1

        def shares(counter: Counter, total: int) -> dict[str, float]:
            return {k: v / (total or 1) for k, v in counter.most_common()}

        return {
            "name": self.name,
            "tunes": self.tunes,
            "valid": self.valid / n,
            "ends_on_tonic": self.ends_on_tonic / n,
            "standard_form": self.standard_form / n,
            "length": _spread(self.lengths),
            "bars": _spread(self.bars),
            "meters": shares(self.meters, self.tunes),
            "modes": shares(self.modes, self.tunes),
            "forms": shares(self.forms, self.tunes),
            "reasons": shares(self.reasons, self.tunes),
            "pitches": shares(self.pitches, sum(self.pitches.values())),
            "durations": shares(self.durations, sum(self.durations.values())),
            "length_histogram": dict(sorted(Counter(self.lengths).items())),
            "bars_histogram": dict(sorted(Counter(self.bars).items())),
        }


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p10": 0.0, "p90": 0.0}
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered), "median": float(statistics.median(ordered)),
            "p10": float(ordered[len(ordered) // 10]), "p90": float(ordered[(9 * len(ordered)) // 10])}


def count_notes(tokens: list[str], pitches: Counter, durations: Counter) -> None:
    """Pitch tokens (chord notes too) into ``pitches``; each note's, rest's or chord's written
    duration token into ``durations`` ("1" when it has none)."""
    from folkrnn.schemas.vocab import CHORD_CLOSE, CHORD_OPEN, DURATION_TOKENS, PITCH_TOKENS, REST

    in_chord = False
    waiting = False  # a note, rest or chord whose duration token may come next
    for t in tokens:
        if in_chord:
            if t == CHORD_CLOSE:
                in_chord, waiting = False, True
            elif t in PITCH_TOKENS:
                pitches[t] += 1
            continue  # durations inside a chord belong to its notes, not to the chord
        if waiting:
            waiting = False
            if t in DURATION_TOKENS:
                durations[t] += 1
                continue
            durations["1"] += 1
        if t in PITCH_TOKENS:
            pitches[t] += 1
            waiting = True
        elif t == REST:
            waiting = True
        elif t == CHORD_OPEN:
            in_chord = True
    if waiting:
        durations["1"] += 1


def collect(dataset: str, name: str, revalidate: bool = False, quiet: bool = True) -> DatasetStats:
    """Read a dataset's shards batch by batch (tokens and findings only) into its stats."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from folkrnn.pipeline.datasets import find_shards
    from folkrnn.transforms.validator import validate_tokens

    stats = DatasetStats(name)
    for path in tqdm(find_shards(dataset), unit=" shards", desc=f"read {name}", disable=quiet):
        try:
            shard = pq.ParquetFile(path)
            names = set(shard.schema_arrow.names)
        except (OSError, ValueError) as err:
            raise UsageError(f"{path} is not a readable Parquet file: {err}") from None
        if "tokens" not in names:
            raise UsageError(f"{path} has no tokens column, so it holds no tunes to compare")
        stored = not revalidate and set(FINDINGS_USED) <= names
        columns = ["tokens"] + [c for c in ("truncated",) if c in names] + (list(FINDINGS_USED) if stored else [])
        for batch in shard.iter_batches(batch_size=BATCH, columns=columns):
            for row in batch.to_pylist():
                tokens = row["tokens"] or []
                findings = row if stored else validate_tokens(tokens, bool(row.get("truncated"))).as_row()
                stats.add(tokens, findings)
    return stats


def label_of(dataset: str) -> str:
    """A short name: the folder's, with its parent's when it is a generic generated/ or tunes/."""
    from folkrnn.pipeline.datasets import NESTED

    parts = os.path.normpath(os.path.abspath(dataset)).split(os.sep)
    return "/".join(parts[-2:]) if parts[-1] in NESTED else parts[-1]


# --- Text ----------------------------------------------------------------------------------------
def format_comparison(a: dict, b: dict, top: int = 12) -> str:
    """Both summaries as one table: a row a statistic, a column a dataset."""
    width = max(14, len(a["name"]) + 2, len(b["name"]) + 2)

    def row(label: str, x: str, y: str) -> str:
        return f"{label:<28}{x:>{width}}{y:>{width}}"

    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    lines = [row("", a["name"], b["name"]), row("tunes", f"{a['tunes']:,}", f"{b['tunes']:,}")]
    for key, label in (("valid", "valid"), ("ends_on_tonic", "ends on the tonic"),
                       ("standard_form", "AABB, 8 + 8 bars")):
        lines.append(row(label, pct(a[key]), pct(b[key])))
    for key, label in (("length", "length (tokens)"), ("bars", "bars")):
        for stat in ("mean", "median", "p10", "p90"):
            lines.append(row(f"{label} {stat}", f"{a[key][stat]:.1f}", f"{b[key][stat]:.1f}"))
    for key, title, limit in (("meters", "meters (share of tunes)", None), ("modes", "modes (share of tunes)", None),
                              ("forms", "forms (share of tunes)", top), ("reasons", "reasons (share of tunes)", top),
                              ("pitches", "pitches (share of pitch tokens)", top),
                              ("durations", "durations (share of notes, rests, chords)", top)):
        keys = top_keys(a[key], b[key], limit)
        if keys:
            lines.append(title)
            lines.extend(row(f"  {k}", pct(a[key].get(k, 0.0)), pct(b[key].get(k, 0.0))) for k in keys)
    return "\n".join(lines)


def top_keys(x: dict[str, float], y: dict[str, float], limit: int | None) -> list[str]:
    """Keys of either, by their larger share, most common first."""
    keys = sorted(set(x) | set(y), key=lambda k: (-max(x.get(k, 0.0), y.get(k, 0.0)), k))
    return keys if limit is None else keys[:limit]


# --- Plot ----------------------------------------------------------------------------------------
def plot_comparison(a: dict, b: dict, path: str, top: int = 12) -> None:
    """A 3 x 3 figure of the comparison, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(18, 13))
    _histogram(axes[0][0], a, b, "length_histogram", "tune length (tokens)")
    _histogram(axes[0][1], a, b, "bars_histogram", "bars a tune (played once)")
    rates = {k: [a[k], b[k]] for k in ("valid", "ends_on_tonic", "standard_form")}
    _bars(axes[0][2], list(rates), [v[0] for v in rates.values()], [v[1] for v in rates.values()], a, b,
          "share of tunes")
    for ax, key, limit, order in ((axes[1][0], "meters", None, None), (axes[1][1], "modes", None, None),
                                  (axes[1][2], "forms", top, None), (axes[2][0], "pitches", 2 * top, _pitch_order),
                                  (axes[2][1], "durations", None, _duration_order), (axes[2][2], "reasons", top, None)):
        keys = top_keys(a[key], b[key], limit)
        if order is not None:
            keys.sort(key=order)
        _bars(ax, keys, [a[key].get(k, 0.0) for k in keys], [b[key].get(k, 0.0) for k in keys], a, b, key)
    fig.suptitle(f"{a['name']} ({a['tunes']:,} tunes) vs {b['name']} ({b['tunes']:,} tunes)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    try:
        fig.savefig(path, dpi=80)
    except OSError as err:
        raise UsageError(f"cannot write the plot {path}: {err}") from None
    finally:
        plt.close(fig)


def _histogram(ax: Any, a: dict, b: dict, key: str, title: str, bins: int = 40) -> None:
    """Both distributions as outlines over the same bins, up to the larger 99th percentile."""
    limit = max(_percentile(a[key], 0.99), _percentile(b[key], 0.99), 1)
    width = max(1, -(-limit // bins))  # integer bins: lengths and bar counts are integers
    edges = list(range(0, limit + 2 * width, width))
    for data in (a, b):
        hist = {int(k): v for k, v in data[key].items()}
        total = sum(hist.values()) or 1
        ax.hist(list(hist), bins=edges, weights=[v / total for v in hist.values()], histtype="step",
                linewidth=1.5, label=data["name"])
    ax.set_xlim(0, edges[-1])
    ax.set_title(title)
    ax.set_ylabel("share of tunes")
    ax.legend()


def _percentile(histogram: dict, q: float) -> int:
    total = sum(histogram.values())
    seen = 0
    for value, count in sorted((int(k), v) for k, v in histogram.items()):
        seen += count
        if seen >= q * total:
            return value
    return 0


def _bars(ax: Any, keys: list[str], xs: list[float], ys: list[float], a: dict, b: dict, title: str) -> None:
    positions = range(len(keys))
    ax.bar([p - 0.2 for p in positions], xs, width=0.4, label=a["name"])
    ax.bar([p + 0.2 for p in positions], ys, width=0.4, label=b["name"])
    ax.set_xticks(list(positions))
    ax.set_xticklabels(keys, rotation=60 if len(keys) > 6 else 0, fontsize=8)
    ax.set_title(title)
    ax.legend()


def _pitch_order(token: str) -> int:
    from folkrnn.transforms.validator import pitch_height

    height = pitch_height(token)
    return height if height is not None else 999


def _duration_order(token: str) -> float:
    from folkrnn.schemas.vocab import DURATIONS

    return float(DURATIONS.get(token, 1))


# --- The command ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from folkrnn.pipeline.outputs import write_json

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot writes a PNG: give a FILE.png, not {args.plot}")
    names = args.names or [label_of(args.a), label_of(args.b)]
    if names[0] == names[1]:
        names = [f"{names[0]} (A)", f"{names[1]} (B)"]
    a = collect(args.a, names[0], args.revalidate, args.quiet).summary()
    b = collect(args.b, names[1], args.revalidate, args.quiet).summary()
    print(format_comparison(a, b, args.top))
    if args.plot:
        plot_comparison(a, b, args.plot, args.top)
        print(f"plot written to {args.plot}")
    if args.json:
        write_json(args.json, {"a": a, "b": b})
    return 0
