"""``folkrnn query``: select tunes from a Parquet dataset with a SQL condition, print them.

Finding, opening and filtering the dataset (in a sandboxed DuckDB) is ``folkrnn.pipeline.datasets``;
this command chooses the columns and formats the rows (table, CSV, JSON lines, playable ABC).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from folkrnn.pipeline.datasets import check_columns, connect, relation, select
from folkrnn.schemas.errors import UsageError

HELP = "Select tunes from a generated dataset or corpus with a SQL condition (DuckDB, pushed down to Parquet)"
FORMATS = ("table", "csv", "json", "abc")
# Columns shown when --columns is not given (those the dataset has, in this order).
DEFAULT_COLUMNS = ("number", "id", "title", "meter", "mode", "form", "valid", "length", "volume", "page")
TABLE_CELL_WIDTH = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help="a folder of Parquet files (hive-partitioned or not) or one .parquet file")
    parser.add_argument("--where", default=None,
                        help="SQL condition, e.g. \"meter = '6/8' AND mode = 'dor' AND valid\"")
    parser.add_argument("--columns", default=None,
                        help="comma-separated columns to show (default: " + ",".join(DEFAULT_COLUMNS)
                        + ", those present)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (aligned text), csv, json (one object a line) or abc (a playable ABC file)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N rows")
    parser.epilog = ("Rows come in tune-number order. Column names: run with --columns '?' to list them. "
                     "--format abc prints each row's abc column (or ABC made from its tokens).")


def parse_columns(text: str | None, available: Sequence[str]) -> list[str]:
    if text is None:
        chosen = [c for c in DEFAULT_COLUMNS if c in available]
        return chosen or list(available)
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UsageError("--columns is empty: give comma-separated column names, e.g. number,title,abc")
    check_columns(names, available)
    return names


# --- Output ---------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def format_table(table: Any) -> Iterator[str]:
    """Aligned text columns; long cells are cut, newlines shown as \\n; a row count at the end."""
    names = table.column_names
    rows = table.to_pylist()
    cells = []
    for row in rows:
        line = []
        for name in names:
            text = str(_plain(row[name])).replace("\n", "\\n")
            line.append(text if len(text) <= TABLE_CELL_WIDTH else text[:TABLE_CELL_WIDTH - 3] + "...")
        cells.append(line)
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    numeric = [all(isinstance(r[n], (int, float)) and not isinstance(r[n], bool) for r in rows if r[n] is not None)
               and any(r[n] is not None for r in rows) for n in names]

    def fmt(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    yield fmt(list(names)) + "\n"
    yield "  ".join("-" * w for w in widths) + "\n"
    for line in cells:
        yield fmt(line) + "\n"
    yield f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


def format_csv(table: Any) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    yield buffer.getvalue()
    for batch in table.to_batches(max_chunksize=1000):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in batch.to_pylist():
            writer.writerow([_plain(v) for v in row.values()])
        yield buffer.getvalue()


def format_json(table: Any) -> Iterator[str]:
    for batch in table.to_batches(max_chunksize=1000):
        yield "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in batch.to_pylist())


def format_abc(table: Any) -> Iterator[str]:
    """A playable ABC 2.1 file: the ``abc`` column of each row, or ABC made from ``tokens``."""
    from folkrnn.transforms.abc.tokenize import detokenize

    yield "%abc-2.1\n"
    for i, row in enumerate(table.to_pylist(), start=1):
        text = row.get("abc")
        if not text:
            number = row.get("number") or i
            text = detokenize(list(row.get("tokens") or []), number=number, title=row.get("title") or "")
        yield "\n" + text if text.endswith("\n") else "\n" + text + "\n"


FORMATTERS = {"table": format_table, "csv": format_csv, "json": format_json, "abc": format_abc}


def run(args: argparse.Namespace) -> int:
    con = connect()
    available = list(relation(con, args.dataset).columns)
    if args.columns is not None and args.columns.strip() == "?":
        print(", ".join(available))
        return 0
    columns = parse_columns(args.columns, available)
    if args.format == "abc":
        source = "abc" if "abc" in available else "tokens" if "tokens" in available else None
        if source is None:
            raise UsageError("--format abc needs an abc or tokens column, and this dataset has neither")
        # the ABC text is what is printed, whatever else --columns named
        columns = [c for c in ("number", "title", source) if c in available]
    table = select(args.dataset, where=args.where, columns=columns, limit=args.limit)
    try:
        for chunk in FORMATTERS[args.format](table):
            sys.stdout.write(chunk)
        sys.stdout.flush()
    except BrokenPipeError:  # `folkrnn query ... | head` is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
