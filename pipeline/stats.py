"""``folkrnn stats``: what a dataset of tunes holds: counts by meter, mode, form and validity,
a histogram of tune lengths and of tokens, as text and (``--plot``) as a PNG.

The counting is SQL run by DuckDB on the Parquet files (the same reader as ``folkrnn query``),
so only the needed columns are read and ``--where`` narrows the tunes first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.files import atomic_write

HELP = "Counts by meter, mode, form and validity; length and token histograms (text, or a PNG with --plot)"
TOP_FORMS = 12
TOP_TOKENS = 40
BAR_WIDTH = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="a folder of Parquet files (hive-partitioned or not)")
    parser.add_argument("--where", default=None, help="only tunes matching this SQL condition (as in folkrnn query)")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the counts and histograms")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of text")


def _nice_width(span: int, bins: int = 20) -> int:
    """A round bin width (1, 2, 5, 10, 20, 25, 50 ...) giving at most ``bins`` bins."""
    raw = max(1.0, span / bins)
    magnitude = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 2.5, 5, 10):
        width = step * magnitude
        if width >= raw and float(width).is_integer():
            return int(width)
    return int(10 * magnitude)


def compute_stats(path: str, where: str | None = None) -> dict[str, Any]:
    """The numbers behind the report, as plain Python values."""
    from folkrnn.pipeline.datasets import apply_where, connect, relation

    con = connect()
    rel = apply_where(relation(con, path), where)
    columns = set(rel.columns)
    rel.create_view("tunes")

    def counts(column: str, limit: int | None = None) -> list[list[Any]] | None:
        if column not in columns:
            return None
        sql = f'SELECT "{column}" AS v, count(*) AS n FROM tunes GROUP BY v ORDER BY n DESC, v NULLS LAST'
        return [[v, n] for v, n in _rows(con, sql + (f" LIMIT {limit}" if limit else ""))]

    stats: dict[str, Any] = {"dataset": path, "where": where, "tunes": _rows(con, "SELECT count(*) FROM tunes")[0][0]}
    stats["valid"] = counts("valid")
    stats["meter"] = counts("meter")
    stats["mode"] = counts("mode")
    stats["form"] = counts("form", TOP_FORMS)
    stats["forms_distinct"] = _rows(con, "SELECT count(DISTINCT form) FROM tunes")[0][0] if "form" in columns else None
    length = '"length"' if "length" in columns else "len(tokens)" if "tokens" in columns else None
    stats["length"] = None
    if length and stats["tunes"]:
        low, high, mean, median = _rows(
            con, f"SELECT min({length}), max({length}), avg({length}), median({length}) FROM tunes")[0]
        if low is not None:
            width = _nice_width(high - low)
            bins = _rows(con, f"SELECT ({length} // {width}) * {width} AS lo, count(*) FROM tunes "
                              f"WHERE {length} IS NOT NULL GROUP BY lo ORDER BY lo")
            stats["length"] = {"min": low, "max": high, "mean": round(float(mean), 1), "median": float(median),
                               "bin_width": width, "bins": _fill_bins(bins, width)}
    stats["constraint"] = None
    if "constraint_log_mass" in columns and length:
        constrained, mean, median, per_token = _rows(
            con, f"SELECT count(constraint_log_mass), avg(constraint_log_mass), median(constraint_log_mass), "
                 f"avg(constraint_log_mass / greatest({length} + 1, 1)) FROM tunes")[0]
        if constrained:
            stats["constraint"] = {"tunes": constrained, "mean_log_mass": round(float(mean), 4),
                                   "median_log_mass": round(float(median), 4),
                                   "kept_per_token": round(math.exp(float(per_token)), 6)}
    stats["tokens"] = None
    if "tokens" in columns:
        by_token = _rows(con, "SELECT t, count(*) AS n FROM (SELECT unnest(tokens) AS t FROM tunes) "
                              "GROUP BY t ORDER BY n DESC, t")
        stats["tokens"] = {"total": sum(n for _, n in by_token), "distinct": len(by_token),
                           "top": [[t, n] for t, n in by_token[:TOP_TOKENS]], "by_class": _token_classes(by_token)}
    return stats


def _fill_bins(bins: list[tuple[int, int]], width: int) -> list[list[int]]:
    """Histogram bins from the first to the last, empty ones included (SQL only returns the others)."""
    found = dict(bins)
    return [[lo, found.get(lo, 0)] for lo in range(bins[0][0], bins[-1][0] + width, width)] if bins else []


def _rows(con: Any, sql: str) -> list[tuple]:
    """The rows of one of our queries over ``tunes``; a --where that fails on the data is a UsageError."""
    import duckdb

    from folkrnn.pipeline.datasets import where_error

    try:
        return con.execute(sql).fetchall()
    except duckdb.Error as err:
        raise where_error(err) from None


def _token_classes(by_token: list[tuple[str, int]]) -> list[list[Any]]:
    """Token counts summed by vocabulary class (pitch, duration, bar ...); "unknown" for the rest."""
    from folkrnn.schemas.vocab import token_class

    by_class: dict[str, int] = {}
    for token, n in by_token:
        try:
            name = token_class(token)
        except KeyError:
            name = "unknown"
        by_class[name] = by_class.get(name, 0) + n
    return sorted([[k, v] for k, v in by_class.items()], key=lambda kv: (-kv[1], kv[0]))


def _bar(n: int, largest: int) -> str:
    return "#" * max(1 if n else 0, round(BAR_WIDTH * n / largest)) if largest else ""


def _count_table(title: str, rows: list[list[Any]], total: int, note: str = "") -> list[str]:
    largest = max((n for _, n in rows), default=0)
    label = max([len(str(_label(v))) for v, _ in rows] + [5])
    lines = [f"{title}{note}"]
    for value, n in rows:
        share = 100 * n / total if total else 0.0
        lines.append(f"  {str(_label(value)):<{label}} {n:>9,} {share:6.1f}%  {_bar(n, largest)}")
    return lines + [""]


def _label(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "valid" if value else "invalid"
    return str(value) if value != "" else '""'


def format_stats(stats: dict[str, Any]) -> str:
    total = stats["tunes"]
    where = f" where {stats['where']}" if stats["where"] else ""
    lines = [f"{stats['dataset']}: {total:,} tunes{where}", ""]
    for key in ("valid", "meter", "mode"):
        if stats[key] is None:
            lines += [f"{key}: not in this dataset" + (" (run folkrnn validate)" if key == "valid" else ""), ""]
        else:
            lines += _count_table(key, stats[key], total)
    if stats["form"] is None:
        lines += ["form: not in this dataset (run folkrnn validate)", ""]
    else:
        shown, distinct = len(stats["form"]), stats["forms_distinct"]
        note = f" ({distinct} distinct)" if shown == distinct else f" ({shown} most common of {distinct})"
        lines += _count_table("form", stats["form"], total, note)
    length = stats["length"]
    if length:
        lines.append(f"length in tokens: min {length['min']}, median {length['median']:g}, mean {length['mean']}, "
                     f"max {length['max']}")
        largest = max(n for _, n in length["bins"])
        for lo, n in length["bins"]:
            lines.append(f"  {lo:>5}-{lo + length['bin_width'] - 1:<5} {n:>9,}  {_bar(n, largest)}")
        lines.append("")
    constraint = stats.get("constraint")
    if constraint:
        lines += [f"well-formed sampling ({constraint['tunes']:,} tunes): the grammar kept on average "
                  f"{100 * constraint['kept_per_token']:.2f}% of the model's probability a token; removed per tune: "
                  f"mean {-constraint['mean_log_mass']:.2f} nats, median {-constraint['median_log_mass']:.2f} nats "
                  "(sum of -log of the mass kept at each draw)", ""]
    tokens = stats["tokens"]
    if tokens:
        lines.append(f"tokens: {tokens['total']:,} in all, {tokens['distinct']} distinct; by class:")
        largest = max((n for _, n in tokens["by_class"]), default=0)
        for name, n in tokens["by_class"]:
            lines.append(f"  {name:<9} {n:>11,} {100 * n / tokens['total']:6.1f}%  {_bar(n, largest)}")
        lines.append(f"tokens, the {len(tokens['top'])} most frequent:")
        largest = max((n for _, n in tokens["top"]), default=0)
        for token, n in tokens["top"]:
            lines.append(f"  {token:<9} {n:>11,} {100 * n / tokens['total']:6.1f}%  {_bar(n, largest)}")
        lines.append("")
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


def plot_stats(stats: dict[str, Any], path: str) -> None:
    """The counts and histograms as one PNG (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, stats[key]) for key in ("valid", "meter", "mode", "form") if stats[key]]
    if stats["length"]:
        panels.append(("length", stats["length"]))
    if stats["tokens"]:
        panels.append(("tokens", stats["tokens"]))
    if not panels:
        raise UsageError(f"nothing to plot: {stats['dataset']} has none of valid, meter, mode, form, length, tokens")
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 4.2 * rows), squeeze=False)
    for ax, (key, data) in zip(axes.flat, panels):
        if key == "length":
            ax.bar([lo for lo, _ in data["bins"]], [n for _, n in data["bins"]], width=data["bin_width"],
                   align="edge", edgecolor="white")
            ax.set_xlabel("tokens per tune")
        elif key == "tokens":
            top = data["top"][:30]
            ax.bar(range(len(top)), [n for _, n in top])
            ax.set_xticks(range(len(top)), [t for t, _ in top], rotation=90, fontsize=7)
        else:
            ax.bar([_label(v) for v, _ in data], [n for _, n in data])
            ax.tick_params(axis="x", rotation=45 if key == "form" else 0, labelsize=8)
        ax.set_title(key if key != "tokens" else "most frequent tokens")
        ax.set_ylabel("tunes" if key != "tokens" else "occurrences")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{stats['dataset']}: {stats['tunes']:,} tunes" + (f" where {stats['where']}" if stats["where"] else ""))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(fig)


def run(args: argparse.Namespace) -> int:
    stats = compute_stats(args.dataset, args.where)
    if args.plot:
        plot_stats(stats, args.plot)
    text = json.dumps(stats, ensure_ascii=False, default=str) + "\n" if args.json else format_stats(stats)
    if args.plot and not args.json:
        text += f"plot written to {args.plot}\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `folkrnn stats ... | head` is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
