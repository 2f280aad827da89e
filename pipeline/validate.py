"""``folkrnn validate DATASET``: the validator's findings as columns of every tune, and a summary.

DATASET is a local folder of ``part-*.parquet`` shards (or a folder holding one ``generated/``
or ``tunes/`` folder of them):

* generated tunes (schema GENERATED) are rewritten as VALIDATED: the same columns, then the
  findings (valid, reasons, problems, bar_count, bar_lengths_failed, sections, form,
  standard_form, ends_on_tonic, pickup). A tune cut off at the length limit (``truncated``)
  is invalid with reason ``truncated``.
* an ingest's ``tunes/`` (schema TUNES) already holds findings: they are recomputed with the
  current rules and the shards rewritten in their own schema, so an older ingest catches up
  with rule changes.
* any other table with a ``tokens`` column keeps its columns and gets the findings after them.

Every shard is rewritten atomically (``folkrnn.schemas.files.write_parquet``: a dot-prefixed temporary
file in its folder, which dataset readers skip, then a rename) with exactly its rows in their
order, and the same input gives the same bytes, so running twice changes nothing.
``--summary-only`` validates and summarises without writing. A failed write (a full disk, a file
too large) is an OSError naming the file and the cause, which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterator
from functools import partial
from typing import Any

from folkrnn.pipeline.datasets import find_shards
from folkrnn.pipeline.outputs import check_json_path, write_json
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.files import write_parquet

HELP = "Add the validator's findings (valid, reasons, bars, form ...) to a dataset's Parquet shards and summarise"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help="folder of part-*.parquet shards: generated tunes, or an ingest's tunes/ folder")
    parser.add_argument("--summary-only", action="store_true",
                        help="validate and print the summary, but rewrite no shard")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the summary to FILE as JSON")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes validating shards at once (default 1: the validator does some 15,000 "
                             "tunes a second, so more pays only for many large shards)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def read_shard(path: str, columns: list[str] | None = None) -> Any:
    """A shard as an Arrow table; an unreadable file is the user's to fix, so a UsageError."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
        raise UsageError(f"{path} is not a readable Parquet file: {err}") from None
    if "tokens" not in table.column_names:
        raise UsageError(f"{path} has no tokens column, so it holds no tunes to validate")
    return table


def output_schema(schema: Any) -> Any:
    """VALIDATED for generated tunes, TUNES for an ingest's, else the columns plus the findings."""
    import pyarrow as pa

    from folkrnn.schemas.tables import FINDINGS, GENERATED, LATER_GENERATED_COLUMNS, TUNES, VALIDATED

    findings = set(FINDINGS.names)
    base = [f for f in schema if f.name not in findings]
    names = [f.name for f in base]
    for plain, target in ((GENERATED, VALIDATED), (TUNES, TUNES)):
        if names == [f.name for f in plain if f.name not in findings]:
            return target
    older = [f.name for f in GENERATED if f.name not in LATER_GENERATED_COLUMNS]
    if names == older:  # written before the later columns: keep them out
        return pa.schema([f for f in VALIDATED if f.name not in LATER_GENERATED_COLUMNS])
    return pa.schema(base + list(FINDINGS))


def with_findings(table: Any, findings: list) -> Any:
    """The table with its findings columns (re)placed, as ``output_schema`` says."""
    import pyarrow as pa

    from folkrnn.schemas.tables import findings_table

    schema = output_schema(table.schema)
    found = findings_table(findings)
    columns = [found.column(field.name) if field.name in found.schema.names else table.column(field.name).cast(field.type)
               for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def rewrite_shard(path: str, table: Any) -> None:
    """Rewrite the shard ``path`` atomically (a reader sees the old file or the new one), keeping its mode."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    write_parquet(path, table)
    if stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)  # keep the shard's mode (atomic_write gives the umask's)


def validate_shard(path: str, write: bool = True) -> tuple[int, Any]:
    """(rows, SummaryTally) of one shard, rewriting it with the findings when ``write``."""
    from folkrnn.transforms.validator import SummaryTally, validate_tokens

    table = read_shard(path)
    tokens = table.column("tokens").to_pylist()
    truncated = (table.column("truncated").to_pylist() if "truncated" in table.column_names
                 else [False] * len(tokens))
    findings = [validate_tokens(t or [], bool(cut)) for t, cut in zip(tokens, truncated)]
    tally = SummaryTally()
    for f in findings:
        tally.add(f)
    if write:
        out = with_findings(table, findings)
        if out.num_rows != table.num_rows:  # a guard, not an assert: it must hold under python -O too
            raise RuntimeError(f"{path}: {table.num_rows} rows in, {out.num_rows} out; shard left untouched")
        rewrite_shard(path, out)
    return table.num_rows, tally


def _results(shards: list[str], write: bool, workers: int) -> Iterator[tuple[int, Any]]:
    task = partial(validate_shard, write=write)
    if workers == 1 or len(shards) == 1:
        yield from map(task, shards)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(shards))) as pool:
        yield from pool.map(task, shards)


def validate_dataset(dataset: str, write: bool = True, workers: int = 1, quiet: bool = True) -> dict:
    """Validate every shard; the summary (``folkrnn.transforms.validator.summarize``'s) with the dataset's counts."""
    from tqdm import tqdm

    from folkrnn.transforms.validator import SummaryTally

    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    shards = find_shards(dataset)
    tally = SummaryTally()
    rows = 0
    for n, shard_tally in tqdm(_results(shards, write, workers), total=len(shards), unit=" shards",
                               desc="validate", disable=quiet):
        rows += n
        tally.merge(shard_tally)
    return {"dataset": os.path.dirname(shards[0]), "shards": len(shards), "rows": rows, "written": write,
            **tally.summary()}


def run(args: argparse.Namespace) -> int:
    from folkrnn.transforms.validator import format_summary

    if args.json:
        check_json_path(args.json)  # before the work, not after it
    summary = validate_dataset(args.dataset, write=not args.summary_only, workers=args.workers, quiet=args.quiet)
    done = "findings written to every shard" if summary["written"] else "nothing written (--summary-only)"
    print(f"validate: {summary['rows']} tunes in {summary['shards']} shard(s) of {summary['dataset']}; {done}")
    print(format_summary(summary))
    if args.json:
        write_json(args.json, summary)
    return 0
