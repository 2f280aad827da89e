"""``folkrnn compile``: generated tunes -> numbered volumes (ABC, PDF, MIDI) and the Parquet corpus.

Outputs under ``--out``::

    volumes/folkrnn-volume-01.abc          ABC 2.1, one block per tune, byte-identical on rebuild
    volumes/folkrnn-volume-01.pdf          title page, contents, tunes, index by type (abcm2ps + ghostscript)
    volumes/folkrnn-volume-01.report.json  abcm2ps/abc2midi messages per tune, counts, timings
    volumes/midi/folkrnn-volume-01/tune-<number>.mid   with --midi
    corpus/volume=1/part-0.parquet         schema CORPUS, hive-partitioned by volume

Tunes are printed in session keys by default (``--key``: session, C as generated, or one tonic;
``folkrnn.transforms.abc.keys``); the corpus keeps the tokens in C and says the printed key in ``key``.

A volume whose report records the same input hash (its rows, the options and the code that
writes it) and whose files are present is skipped, so a re-run only rebuilds what changed.

A run holds a lock on ``--out`` (one run writes there at a time) and first removes what a killed
run left there (dot-prefixed temporary files and work folders). Pool workers, abcm2ps and
ghostscript die with the run, even with kill -9 (Linux: ``subprocesses.die_with_parent``).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time

from folkrnn.schemas.errors import UsageError, describe_os_error
from folkrnn.schemas.files import folder_lock

HELP = "Compile generated tunes into numbered volumes (ABC, typeset PDF with contents, MIDI) and a corpus"
# The code that shapes a volume's files (its ABC, PDF, MIDI, corpus partition and report).
CODE_FILES = ("pipeline/books.py", "pipeline/typeset.py", "pipeline/midi.py", "transforms/abc/volume.py",
              "transforms/abc/typeset_source.py", "transforms/abc/tool_output.py", "transforms/abc/tokenize.py",
              "transforms/titles.py", "transforms/tune_types.py", "transforms/abc/keys.py",
              "transforms/abc/header.py", "transforms/abc/playback.py", "transforms/abc/postscript_glyphs.py",
              "schemas/music.py")
# The same as folkrnn.pipeline.books.PER_VOLUME and DEFAULT_BOOK_TITLE (a test checks): repeated here so
# that `folkrnn --help` does not import Arrow.
PER_VOLUME = 3000
DEFAULT_BOOK_TITLE = "The folk-rnn Session Book"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help="generated tunes: a folder of Parquet shards (folkrnn generate or validate)")
    parser.add_argument("--out", default="out/compiled", help="output folder (default: out/compiled)")
    parser.add_argument("--per-volume", type=int, default=PER_VOLUME, metavar="N",
                        help=f"tunes per volume (default {PER_VOLUME}, as the original session books)")
    parser.add_argument("--tunes", choices=["all", "valid"], default="all",
                        help="all tunes as they came (default, as the original books; those the validator fails "
                        "are marked * in the contents and above the tune) or only valid ones")
    parser.add_argument("--where", default=None,
                        help="only tunes matching this SQL condition (as in folkrnn query), e.g. \"meter = '6/8'\"")
    parser.add_argument("--title", default=DEFAULT_BOOK_TITLE, help=f"book title (default: {DEFAULT_BOOK_TITLE})")
    parser.add_argument("--key", default="session", metavar="session|C|TONIC",
                        help="key the tunes are printed in: session (default: D or G major, E or A minor and dorian, "
                             "D or A mixolydian, whichever keeps the tune within D4-B6, best D4-B5), C (as generated) or a tonic "
                             "such as D, Bb, F# (each tune keeps its mode)")
    parser.add_argument("--no-pdf", action="store_true", help="ABC and corpus only (the corpus has no pages)")
    parser.add_argument("--midi", action="store_true",
                        help="also one MIDI file per tune (abc2midi; melody on General MIDI 110, Fiddle; tempo from "
                             "the tune's Q:, else by meter)")
    parser.add_argument("--jobs", type=int, default=2, help="volumes built at once (default 2)")
    parser.add_argument("--force", action="store_true", help="rebuild volumes even when up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.epilog = ("Tunes missing the validator's findings are validated on the way. Tune numbers are the "
                     "generation numbers and run on across volumes.")


def check_arguments(args: argparse.Namespace) -> None:
    if args.per_volume < 1:
        raise UsageError(f"--per-volume must be at least 1, got {args.per_volume}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if not args.title.strip():
        raise UsageError("--title is empty: give the book a title")
    from folkrnn.transforms.abc.keys import check_key_choice

    args.key = check_key_choice(args.key)
    from folkrnn.pipeline.subprocesses import missing_tools, missing_tools_text

    missing = missing_tools(*([] if args.no_pdf else ["abcm2ps", "gs"]), *(["abc2midi"] if args.midi else []))
    if missing:
        raise UsageError(missing_tools_text(missing) + ("" if args.midi or args.no_pdf else ", or use --no-pdf"))


def code_hash() -> str:
    """Hash of the code that writes volumes: editing it makes every volume out of date."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for name in CODE_FILES:
        with open(os.path.join(root, name), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def load_tunes(path: str):  # -> pa.Table (VALIDATED)
    """The dataset as a VALIDATED table; findings are computed when the dataset lacks them."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from folkrnn.pipeline.books import missing_columns, validated_table
    from folkrnn.pipeline.datasets import arrow_files, dataset_files

    found, hive, base = dataset_files(path)  # one-line errors for a missing or empty dataset
    filesystem, paths, base = arrow_files(found, base)  # gs:// (any Beam filesystem) is read through Beam
    dataset = ds.dataset(paths, filesystem=filesystem, format="parquet", partitioning="hive" if hive else None,
                         partition_base_dir=base if hive else None)
    missing = missing_columns(dataset.schema)
    if missing:
        raise UsageError(f"{path} lacks the columns {', '.join(missing)}: give a dataset written by folkrnn generate "
                         "or folkrnn validate")
    wanted = [name for name in dataset.schema.names if name not in ("volume", "page")]
    try:
        return validated_table(dataset.to_table(columns=wanted))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        first = str(err).strip().split("\n")[0]
        raise UsageError(f"{path}: the columns do not have the types of folkrnn.schemas.tables.VALIDATED: {first}") from None


def checkpoint_names(path: str) -> dict[str, str]:
    """Checkpoint id -> name, from the manifest.json of the generate run that made the dataset
    (beside its shards folder, ``DATASET/../manifest.json``, or in the run folder given as DATASET).

    The name is the manifest's ``checkpoint_name`` (the name stored in the checkpoint) when it has
    one, else the checkpoint's file name (never its path: volumes name no paths). No manifest, or
    one that records no checkpoint: {} (the volumes say the dataset does not record it).
    """
    from folkrnn.pipeline.datasets import dataset_files
    from folkrnn.schemas import files

    base = dataset_files(path)[2]
    is_folder = os.path.isdir(base) if files.is_local(base) else not base.endswith(".parquet")
    folder = base if is_folder else parent_folder(base)
    for candidate in (files.join(folder, "manifest.json"), files.join(parent_folder(folder), "manifest.json")):
        if not files.exists(candidate) or (files.is_local(candidate) and not os.path.isfile(candidate)):
            continue
        try:
            manifest = json.loads(files.read_bytes(candidate).decode("utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"{candidate} is not a folkrnn generate manifest ({type(err).__name__}: {err}); "
                             "fix or move it, it names the checkpoint on the title pages") from None
        settings = manifest.get("settings") if isinstance(manifest, dict) else None
        checkpoint_id = settings.get("checkpoint_id") if isinstance(settings, dict) else None
        name = manifest.get("checkpoint_name") or os.path.basename(str(manifest.get("checkpoint") or "")) \
            if isinstance(manifest, dict) else ""
        return {str(checkpoint_id): str(name)} if checkpoint_id and name else {}
    return {}


def parent_folder(path: str) -> str:
    """The folder holding ``path``, locally or on an object store (``gs://b/run/generated`` -> ``gs://b/run``)."""
    from folkrnn.schemas import files

    return os.path.dirname(path) if files.is_local(path) else path.rstrip("/").rsplit("/", 1)[0]


def select_tunes(table, which: str, where: str | None):
    import pyarrow.compute as pc

    from folkrnn.pipeline.datasets import filter_table

    if which == "valid":
        table = table.filter(pc.fill_null(table.column("valid"), False))
    if where is not None:
        table = filter_table(table, where)
    return table


def plan_jobs(args: argparse.Namespace, table, names: dict[str, str] | None = None) -> list:
    from folkrnn.pipeline.books import VolumeJob, input_hash, split_volumes

    try:
        volumes = split_volumes(table, args.per_volume)
    except ValueError as err:
        raise UsageError(f"{args.dataset}: {err}; tune numbers must be unique") from None
    code = code_hash()
    jobs = []
    for k, part in enumerate(volumes, start=1):
        job = VolumeJob(table=part, volume=k, n_volumes=len(volumes), book_title=args.title, out_dir=args.out,
                        pdf=not args.no_pdf, midi=args.midi, checkpoint_names=dict(names or {}), key=args.key)
        job.input_hash = input_hash(part, volume=k, volumes=len(volumes), title=args.title, pdf=job.pdf,
                                    midi=job.midi, code=code, checkpoints=job.checkpoint_names, key=job.key)
        jobs.append(job)
    return jobs


def start_worker(parent: int) -> None:
    """Pool initializer: the worker (and so the tools it runs) dies with the compile process."""
    from folkrnn.pipeline.subprocesses import die_with_parent

    die_with_parent(parent)


def build(job):
    """Worker entry point (runs in a pool process)."""
    from folkrnn.pipeline.books import build_volume

    return build_volume(job)


def remove_stale(out_dir: str, jobs: list) -> None:
    """Volumes and partitions of an earlier run that this run no longer makes (fewer volumes)."""
    keep = {os.path.basename(j.stem) for j in jobs}
    for path in glob.glob(os.path.join(out_dir, "volumes", "folkrnn-volume-*")):
        if re.sub(r"\.(abc|pdf|report\.json)$", "", os.path.basename(path)) not in keep:
            os.remove(path)
    for path in glob.glob(os.path.join(out_dir, "volumes", "midi", "folkrnn-volume-*")):
        if os.path.basename(path) not in keep:
            shutil.rmtree(path)
    volumes = {str(j.volume) for j in jobs}
    for path in glob.glob(os.path.join(out_dir, "corpus", "volume=*")):
        if path.rsplit("=", 1)[1] not in volumes:
            shutil.rmtree(path)


def failure_text(err: Exception) -> str:
    return describe_os_error(err) if isinstance(err, OSError) else str(err)


def run_jobs(todo: list, n_workers: int, quiet: bool) -> tuple[dict[int, dict], dict[int, str]]:
    """Build volumes, ``n_workers`` at a time in a process pool; returns reports and failures."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    reports: dict[int, dict] = {}
    failures: dict[int, str] = {}
    bar = tqdm(total=len(todo), unit="volume", desc="compile", disable=quiet or not todo, file=sys.stderr)
    if n_workers == 1 or len(todo) == 1:
        for job in todo:
            try:
                reports[job.volume] = build(job)
            except (RuntimeError, OSError) as err:
                failures[job.volume] = failure_text(err)
            bar.update()
    else:
        # spawn, not fork: the parent has DuckDB and Arrow thread pools that a fork would copy mid-flight.
        # The workers are started from this (the main) thread, which lives as long as the run:
        # the kernel's parent-death signal follows the thread that started a process.
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=start_worker, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(build, job): job for job in todo}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    reports[job.volume] = future.result()
                except (RuntimeError, OSError) as err:
                    failures[job.volume] = failure_text(err)
                bar.update()
    bar.close()
    return reports, failures


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if "://" in args.out and not args.out.startswith("file://"):
        raise UsageError(f"--out {args.out}: volumes are typeset where compile runs, so --out is a local folder "
                         "(copy it to the bucket afterwards, e.g. gcloud storage cp -r OUT gs://BUCKET/...)")
    start = time.perf_counter()
    table = select_tunes(load_tunes(args.dataset), args.tunes, args.where)
    if table.num_rows == 0:
        raise UsageError(f"no tunes selected from {args.dataset} (--tunes {args.tunes}"
                         + (f", --where {args.where!r}" if args.where else "") + ")")
    jobs = plan_jobs(args, table, checkpoint_names(args.dataset))
    with folder_lock(args.out, "compile"):  # only now: a mistake in the arguments makes no folder
        return write_volumes(args, table, jobs, start)


def midi_summary(report: dict) -> str:
    """``3000 MIDI files, `` or ``2998 MIDI files (none for tunes 203, 1655: see the report), ``."""
    if report.get("midi_files") is None:
        return ""
    missing = [str(t["number"]) for t in report.get("tunes_without_midi", [])]
    return f"{report['midi_files']} MIDI files" + (
        f" (none for tunes {', '.join(missing)}: see the report)" if missing else "") + ", "


def write_volumes(args: argparse.Namespace, table, jobs: list, start: float) -> int:
    from folkrnn.pipeline.books import read_report, remove_leftovers, up_to_date

    remove_leftovers(args.out)  # safe: the lock keeps other runs out of this folder
    todo = [j for j in jobs if args.force or not up_to_date(j)]
    print(f"compile: {table.num_rows} tunes -> {len(jobs)} volume{'s' if len(jobs) != 1 else ''} of up to "
          f"{args.per_volume}; {len(jobs) - len(todo)} up to date, {len(todo)} to build", flush=True)
    reports, failures = run_jobs(todo, min(args.jobs, max(1, len(todo))), args.quiet)
    if not failures:
        remove_stale(args.out, jobs)
    for job in jobs:
        if job.volume in failures:
            print(f"volume {job.volume}: FAILED: {failures[job.volume]}")
            continue
        report = reports.get(job.volume) or read_report(job.stem + ".report.json") or {}
        status = f"built in {report['seconds']['total']:.1f} s" if job.volume in reports else "up to date"
        typeset = (f"{report['pages']} pages, abcm2ps errors in {report['tunes_with_abcm2ps_errors']} tunes "
                   f"({report['valid_tunes_with_abcm2ps_errors']} valid), " if report.get("pdf") else "")
        print(f"volume {job.volume}/{job.n_volumes}: {report.get('tunes')} tunes ({report.get('valid_tunes')} valid), "
              f"numbers {report.get('first')}-{report.get('last')}, {typeset}{midi_summary(report)}{status}")
    print(f"written to {args.out}/: volumes/ (ABC, PDF, reports), corpus/ (Parquet, by volume) "
          f"in {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0
