"""``folkrnn validate DATASET``: the validator's findings as columns of every tune, and a summary.

DATASET is a folder of ``part-*.parquet`` shards (or a folder holding one ``generated/`` or
``tunes/`` folder of them), local or on any Beam filesystem (``gs://bucket/run/generated``):

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

Without ``--runner`` the shards are validated here (``--workers`` processes). With ``--runner`` (and
any Beam flag: ``--runner DataflowRunner --project ...``) each shard is one element of a Beam pipeline
(``folkrnn.pipeline.beam.validate.ValidateShards``): a worker validates and rewrites it with the same
code, so the shards get the same bytes and the CLI prints the same summary. The workers' tallies
come back through a JSON file under ``--temp_location`` (a local temporary folder for the local
runners). A shard that cannot be read does not stop the others there: they are validated, and the
run ends with the first such shard's error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import tempfile
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

from folkrnn.pipeline.datasets import find_shards
from folkrnn.pipeline.outputs import check_json_path, write_json
from folkrnn.schemas import files
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.files import write_parquet

HELP = ("Add the validator's findings (valid, reasons, bars, form ...) to a dataset's Parquet shards and summarise "
        "(--runner for Beam/Dataflow)")
ACCEPTS_BEAM_FLAGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help="folder of part-*.parquet shards (local or gs://): generated tunes, or an ingest's "
                             "tunes/ folder")
    parser.add_argument("--summary-only", action="store_true",
                        help="validate and print the summary, but rewrite no shard")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the summary to FILE as JSON")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes validating shards at once (default 1: the validator does some 15,000 "
                             "tunes a second, so more pays only for many large shards)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.epilog = ("Without --runner the shards are validated in this process (--workers). With --runner (e.g. "
                     "DataflowRunner, and any Beam flag) each shard is a Beam element, validated and rewritten by "
                     "a worker: the same bytes and the same summary.")


def read_shard(path: str, columns: list[str] | None = None) -> Any:
    """A shard as an Arrow table, from any filesystem; an unreadable file is the user's to fix, so a UsageError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = path if files.is_local(path) else pa.BufferReader(files.read_bytes(path))
        table = pq.read_table(source, columns=columns)
    except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError; Beam's BeamIOError an OSError
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
    """Rewrite the shard ``path`` atomically (a reader sees the old file or the new one), keeping its
    mode; on an object store (``gs://``) a temporary object renamed over it."""
    if not files.is_local(path):
        write_parquet(path, table)
        return
    path = files.local_path(path)
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
    return {"dataset": folder_of(shards[0]), "shards": len(shards), "rows": rows, "written": write,
            **tally.summary()}


def folder_of(shard: str) -> str:
    return os.path.dirname(shard) if files.is_local(shard) else shard.rsplit("/", 1)[0]


def validate_on_beam(dataset: str, write: bool, beam_args: list[str]) -> dict | None:
    """``validate_dataset`` as a Beam pipeline, one element per shard; None for a ``--dry_run``
    (the pipeline translated for its runner, nothing run)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import TestOptions

    from folkrnn.pipeline.beam.options import is_local_runner, pipeline_options, runner_name
    from folkrnn.pipeline.beam.validate import ValidateShards

    options = pipeline_options(beam_args)
    if files.is_local(dataset) and not is_local_runner(options):
        raise UsageError(f"{dataset} is on this machine, which the workers of --runner {runner_name(options)} "
                         "cannot read: give the dataset's gs:// folder (or another filesystem they share)")
    shards = find_shards(dataset)
    dry_run = bool(options.view_as(TestOptions).dry_run)  # Beam's own test: any value given counts
    with summary_location(options, remove=not dry_run) as summary_path:
        with beam.Pipeline(options=options) as pipeline:
            (
                pipeline
                | "Shards" >> beam.Create(list(enumerate(shards)))
                | "Validate" >> ValidateShards(write, summary_path, len(shards))
            )
        if dry_run:
            return None
        result = json.loads(files.read_bytes(summary_path).decode("utf-8"))
    errors = result.pop("errors")
    if errors:
        more = (f" ({len(errors) - 1} more shard(s) could not be validated; the other shards were"
                f"{'' if write else ' not'} rewritten)") if len(errors) > 1 else ""
        raise UsageError(errors[0] + more)
    rows = result.pop("rows")
    return {"dataset": folder_of(shards[0]), "shards": len(shards), "rows": rows, "written": write, **result}


@contextlib.contextmanager
def summary_location(options: Any, remove: bool = True) -> Iterator[str]:
    """Where the workers leave the summary for this process: under ``--temp_location`` (Dataflow's
    gs:// one), or in a local temporary folder for a local runner; removed afterwards (``remove``:
    a dry run never wrote it, and must not reach for the bucket)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from folkrnn.pipeline.beam.options import is_local_runner, runner_name

    temp = options.view_as(GoogleCloudOptions).temp_location
    name = f"folkrnn-validate-{uuid.uuid4().hex[:12]}.json"
    if temp:
        path = files.join(temp, name)
        try:
            yield path
        finally:
            if remove:
                _remove_quietly(path)
        return
    if not is_local_runner(options):
        raise UsageError(f"--runner {runner_name(options)} needs --temp_location (a folder its workers and this "
                         "machine both reach, e.g. gs://BUCKET/tmp): the validation summary comes back through it")
    with tempfile.TemporaryDirectory(prefix="folkrnn-validate-") as folder:
        yield os.path.join(folder, name)


def _remove_quietly(path: str) -> None:
    try:
        if files.exists(path):
            if files.is_local(path):
                os.remove(files.local_path(path))
            else:
                from apache_beam.io.filesystems import FileSystems

                FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - a leftover temporary file must not hide the run's result
        pass


def check_runner_arguments(args: argparse.Namespace, beam_args: list[str], on_beam: bool) -> None:
    if on_beam and args.workers != 1:
        raise UsageError("--workers is for a local run; with --runner the runner decides (e.g. "
                         "--direct_num_workers for the DirectRunner, --max_num_workers for Dataflow)")
    if beam_args and not on_beam:
        raise UsageError(f"Beam flags ({' '.join(beam_args)}) need --runner (e.g. --runner DataflowRunner); "
                         "without it validate runs in this process")


def run(args: argparse.Namespace) -> int:
    from folkrnn.transforms.validator import format_summary

    beam_args = getattr(args, "beam_args", [])  # set by the CLI; absent when a caller builds args by hand
    on_beam = any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args)
    check_runner_arguments(args, beam_args, on_beam)
    if args.json:
        check_json_path(args.json)  # before the work, not after it
    if on_beam:
        summary = validate_on_beam(args.dataset, write=not args.summary_only, beam_args=beam_args)
        if summary is None:
            print("validate: --dry_run: the pipeline was built and translated for the runner, not run; "
                  "nothing validated or written")
            return 0
    else:
        summary = validate_dataset(args.dataset, write=not args.summary_only, workers=args.workers,
                                   quiet=args.quiet)
    done = "findings written to every shard" if summary["written"] else "nothing written (--summary-only)"
    print(f"validate: {summary['rows']} tunes in {summary['shards']} shard(s) of {summary['dataset']}; {done}")
    print(format_summary(summary))
    if args.json:
        write_json(args.json, summary)
    return 0
