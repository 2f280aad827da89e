"""Build and run the ingest pipeline (sources -> IngestTunes -> Parquet tables + summary.json).

A run never touches the output of the previous one until its own is complete: it writes into
``OUT/.staging-<id>/`` (dot-prefixed: dataset readers skip it) and only then moves its tables,
``tunes.folkrnn.txt`` and ``summary.json`` in (``commit_staging``), so ``OUT`` holds the old output
or the new one, each with the summary that counts its shards. Moving several folders cannot be one
atomic step: the moves take a few renames, and a journal (``OUT/.ingest-commit.json``, written
before the first) lets the next run finish a move a crash interrupted. The next run also removes
what a killed run left. ``OUT/http-cache`` (or ``--cache-dir``) is never moved: the scraping cache
survives every run. One run writes into a folder at a time (a lock on it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from folkrnn.pipeline.beam.ingest import IngestTunes, RemoveScratch, SummaryFn, WriteTable
from folkrnn.pipeline.beam.options import pipeline_options
from folkrnn.pipeline.beam.progress import LocalProgress
from folkrnn.pipeline.beam.sources import IngestPlan, ReadSources, plan_sources
from folkrnn.schemas import files
from folkrnn.schemas.files import atomic_write, folder_lock
from folkrnn.schemas.tables import INGEST_TABLES
from folkrnn.transforms.byte_ranges import SPLIT_SIZE
from folkrnn.transforms.ingest import DUPLICATES, REJECTS, outcome_events

__all__ = ["IngestPlan", "build_ingest", "plan_sources", "run_ingest"]


def build_ingest(pipeline: beam.Pipeline, plan: IngestPlan, out: str, *, valid_fraction: float = 0.05,
                 num_shards: int = 1, cache_dir: str | None = None, delay: float = 1.0,
                 per_host: int = 1, timeout: float = 30.0, follow_offsite: bool = False,
                 progress: LocalProgress | None = None, split_size: int = SPLIT_SIZE) -> None:
    """Add the whole ingest to ``pipeline``: read, process, write the tables and summary.json.

    Files larger than ``split_size`` bytes are read in ranges by several workers (0: each whole).
    """
    read = pipeline | "ReadSources" >> ReadSources(
        plan, cache_dir=cache_dir or os.path.join(out, "http-cache"), delay=delay, per_host=per_host,
        timeout=timeout, follow_offsite=follow_offsite, split_size=split_size)
    processed = read["tunes"] | "Ingest" >> IngestTunes(valid_fraction, progress)
    # Big PCollections are never flattened: the local runners would hold a Flatten's rows in memory.
    rejects = (read[REJECTS], processed[REJECTS])

    duplicates = processed[DUPLICATES] | f"Write_{DUPLICATES}" >> WriteTable(
        out, DUPLICATES, INGEST_TABLES[DUPLICATES], num_shards)
    tunes = processed["tunes"] | "Write_tunes" >> WriteTable(
        out, "tunes", INGEST_TABLES["tunes"], num_shards, exclude=duplicates["runs"])
    rejected = rejects | f"Write_{REJECTS}" >> WriteTable(out, REJECTS, INGEST_TABLES[REJECTS], num_shards)
    _ = [t["written"] for t in (tunes, duplicates, rejected)] | "AllWritten" >> beam.Flatten() | RemoveScratch(out)

    # Counting what came in separately from what went out makes "nothing lost" checkable. Events
    # are counted in the step they arise in: only the counts travel on.
    events = {
        "Read": read["tunes"] | "ReadEvents" >> beam.FlatMap(read_events),
        "ReadRejects": read[REJECTS] | "ReadRejectEvents" >> beam.FlatMap(
            lambda r: [("read", r["collection"]), outcome_events(REJECTS)(r)]),
        "Rejects": processed[REJECTS] | "RejectEvents" >> beam.Map(outcome_events(REJECTS)),
        "Kept": processed["kept"] | "KeptEvents" >> beam.Map(outcome_events("tunes")),
        "Duplicates": processed[DUPLICATES] | "DuplicateEvents" >> beam.Map(outcome_events(DUPLICATES)),
        "Repeated": read["repeated"] | "RepeatedEvents" >> beam.Map(lambda path: ("repeated", path)),
    }
    counted = [pcoll | f"Count{name}" >> beam.combiners.Count.PerElement() for name, pcoll in events.items()]
    summary_path = files.join(out, "summary.json")
    (
        counted
        | "AllCounts" >> beam.Flatten()
        | "Summarize" >> beam.CombineGlobally(SummaryFn())
        | "WriteSummary" >> beam.Map(lambda s: files.write_json(summary_path, s))
    )


def read_events(tune) -> list[tuple]:
    """A record read, and whether it came from a file recognised as folk-rnn text."""
    return [("read", tune.collection)] + ([("folkrnn_text", tune.source)] if tune.meta.get("detected") else [])


def run_ingest(args: argparse.Namespace) -> dict:
    """Run ``folkrnn ingest`` with parsed arguments; returns the summary.

    An I/O failure anywhere, in a Beam worker too, is raised as the OSError naming its path.
    """
    from tqdm import tqdm

    plan = plan_sources(args.sources, args.format, args.url_list)
    out = args.out
    cache_dir = args.cache_dir or os.path.join(out, "http-cache")  # outside the staging folder: it survives
    with folder_lock(out, "ingest"):
        remove_leftovers(out)  # safe: the lock keeps other runs out of this folder
        staging = make_staging(out)
        options = pipeline_options(args.beam_args)
        progress = None if args.quiet else LocalProgress(tqdm(desc="ingest", unit=" tunes", smoothing=0.1))
        try:
            with beam_failures_unlogged(), beam.Pipeline(options=options) as pipeline:
                build_ingest(pipeline, plan, staging, valid_fraction=args.valid_fraction,
                             num_shards=args.num_shards, cache_dir=cache_dir, delay=args.delay,
                             per_host=args.per_host,
                             timeout=getattr(args, "timeout", 30.0),  # getattr: benchmarks build args by hand
                             follow_offsite=getattr(args, "follow_offsite", False), progress=progress,
                             split_size=getattr(args, "split_size", SPLIT_SIZE))
            if args.write_folkrnn_text:
                write_folkrnn_text_file(staging)
        except BaseException as err:
            discard(staging)  # the previous output stays as it was
            os_error = os_error_of(err) if isinstance(err, Exception) else None
            if os_error is not None and os_error is not err:
                raise os_error from None
            raise
        finally:
            if progress is not None:
                progress.close()
        commit_staging(staging, out)
    with FileSystems.open(FileSystems.join(out, "summary.json")) as handle:
        return json.loads(handle.read().decode("utf-8"))


def write_folkrnn_text_file(out: str) -> str:
    """``OUT/tunes.folkrnn.txt`` from the tunes table, in id order, a record batch of each shard at a time."""
    import glob
    import heapq

    import pyarrow.parquet as pq

    from folkrnn.transforms.abc.split import folkrnn_text_blocks

    def tunes_of(shard: str) -> Iterator[tuple[str, list[str]]]:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=1024, columns=["id", "tokens"]):
            yield from zip(batch.column("id").to_pylist(), batch.column("tokens").to_pylist())

    shards = sorted(glob.glob(os.path.join(out, "tunes", "*.parquet")))
    in_order = heapq.merge(*(tunes_of(shard) for shard in shards))
    path = os.path.join(out, FOLKRNN_TEXT)

    def write(handle) -> None:
        for block in folkrnn_text_blocks(tokens for _, tokens in in_order):
            handle.write(block.encode("utf-8"))

    atomic_write(path, write)
    return path


# -- I/O failures out of a pipeline ----------------------------------------------------------

@contextlib.contextmanager
def beam_failures_unlogged() -> Iterator[None]:
    """Beam logs a failing step's traceback before raising it; the error raised is what the user
    sees (as one line), so that log is silenced while the pipeline runs."""
    logger = logging.getLogger("apache_beam.runners.common")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# How a worker's OSError reads once a multi-process runner has turned it into text.
_OS_ERROR_LINE = re.compile(r"(?m)^[\w.]*(?:Error|Exception): \[Errno (\d+)\] ([^\n]*?)(?:: '([^'\n]*)')?"
                            r"(?: \[while running [^\n]*)?$")


def os_error_of(err: BaseException) -> OSError | None:
    """The I/O failure behind a pipeline's error, or None. In-process runners chain the worker's
    OSError (path and errno); multi-process runners pass on only its traceback as text."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        current = current.__cause__ or current.__context__
    found = list(_OS_ERROR_LINE.finditer(str(err)))
    named = [m for m in found if m.group(3)] or found
    if not named:
        return None
    number, cause, path = named[-1].groups()
    return OSError(int(number), cause, path) if path else OSError(int(number), cause)


# -- the output folder: lock, staging, commit ------------------------------------------------

STAGING_PREFIX = ".staging-"
REPLACED_PREFIX = ".replaced-"
JOURNAL = ".ingest-commit.json"
FOLKRNN_TEXT = "tunes.folkrnn.txt"
# What a run writes, in the order it is moved in: the summary last.
OUTPUTS = (*INGEST_TABLES, FOLKRNN_TEXT, "summary.json")


def is_local(path: str) -> bool:
    return "://" not in path


def make_staging(out: str) -> str:
    """A new staging folder inside ``out``, with the table folders the shards go into."""
    staging = FileSystems.join(out, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    for name in INGEST_TABLES:
        if not is_local(out):
            FileSystems.mkdirs(FileSystems.join(staging, name))
            continue
        try:
            os.makedirs(os.path.join(staging, name))
        except OSError as err:  # a read-only or full ``out``: name it, not our hidden folder
            raise OSError(err.errno, err.strerror, out) from err
    return staging


def discard(path: str) -> None:
    """Remove a folder of ours, best effort: the error that brought us here is the one to report."""
    try:
        if is_local(path):
            shutil.rmtree(path, ignore_errors=True)
        elif FileSystems.exists(path):
            FileSystems.delete([path])
    except Exception:  # noqa: BLE001
        pass


def remove_leftovers(out: str) -> None:
    """Finish a commit a crash interrupted, then remove what killed runs left behind."""
    if not is_local(out):
        return
    if os.path.exists(os.path.join(out, JOURNAL)):
        finish_commit(out)
    for entry in os.listdir(out):
        path = os.path.join(out, entry)
        if entry.startswith((STAGING_PREFIX, REPLACED_PREFIX)) and os.path.isdir(path):
            shutil.rmtree(path)
        elif entry.startswith(f".{JOURNAL}.") and entry.endswith(".tmp"):  # atomic_write's, if killed
            os.unlink(path)


def commit_staging(staging: str, out: str) -> None:
    """Move a complete staged run into ``out``, replacing the previous run's outputs."""
    if not is_local(out):
        commit_remote(staging, out)
        return
    name = os.path.basename(staging)
    journal = {"staging": name, "replaced": REPLACED_PREFIX + name[len(STAGING_PREFIX):],
               "outputs": [o for o in OUTPUTS if os.path.lexists(os.path.join(staging, o))]}
    atomic_write(os.path.join(out, JOURNAL), json.dumps(journal))
    finish_commit(out)


def finish_commit(out: str) -> None:
    """Carry out the journal's move; safe to repeat after a crash at any point of it.

    An output the staged run has is moved in (a folder: the old one first moved aside, since a
    rename cannot replace a non-empty folder; a file: replaced in one rename); an output only the
    old run has (``tunes.folkrnn.txt``) is moved aside, as it no longer matches the summary.
    """
    with open(os.path.join(out, JOURNAL), encoding="utf-8") as handle:
        journal = json.load(handle)
    staging, replaced = os.path.join(out, journal["staging"]), os.path.join(out, journal["replaced"])
    os.makedirs(replaced, exist_ok=True)
    for name in OUTPUTS:
        current, new = os.path.join(out, name), os.path.join(staging, name)
        if name in journal["outputs"]:
            if not os.path.lexists(new):
                continue  # moved in before the crash
            if os.path.isdir(new) and os.path.lexists(current):
                os.rename(current, os.path.join(replaced, name))
            os.replace(new, current)
        elif os.path.lexists(current):
            os.replace(current, os.path.join(replaced, name))
    _sync_folder(out)
    os.unlink(os.path.join(out, JOURNAL))
    shutil.rmtree(replaced, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _sync_folder(path: str) -> None:
    """Make the renames durable before the journal goes (a power cut then finds one or the other)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder; the renames are still done
        pass
    finally:
        os.close(fd)


def commit_remote(staging: str, out: str) -> None:
    """The same move on an object store (gs://), file by file: there a rename is a copy anyway."""
    for name in INGEST_TABLES:
        old = [m.path for m in FileSystems.match([FileSystems.join(out, name, "*")])[0].metadata_list]
        if old:
            FileSystems.delete(old)
        new = [m.path for m in FileSystems.match([FileSystems.join(staging, name, "*")])[0].metadata_list]
        if new:
            FileSystems.rename(new, [FileSystems.join(out, name, p.rsplit("/", 1)[-1]) for p in new])
    for name in (FOLKRNN_TEXT, "summary.json"):
        target = FileSystems.join(out, name)
        if FileSystems.exists(FileSystems.join(staging, name)):
            if FileSystems.exists(target):
                FileSystems.delete([target])
            FileSystems.rename([FileSystems.join(staging, name)], [target])
        elif FileSystems.exists(target):
            FileSystems.delete([target])
    discard(staging)
