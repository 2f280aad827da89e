"""Tune books: generated tunes as numbered volumes (ABC 2.1, a typeset PDF, MIDI) and a corpus.

A volume is a run of consecutive tunes, 3,000 by default, in tune-number order; tune numbers are
the generation numbers, so ``X:488`` is tune 488 in the ABC, the PDF, the MIDI file names and the
corpus. This module plans the volumes and builds each one (a ``VolumeJob``): its ABC text comes
from ``folkrnn.transforms.abc.volume``, its PDF from ``folkrnn.pipeline.typeset`` (abcm2ps and
ghostscript), its MIDI files from ``folkrnn.pipeline.midi``; then its corpus partition and its
report, which says what the tools said about each tune. Each tune's type
(``folkrnn.transforms.tune_types``) is its ``R:``, ``Q:``, index section and ``tune_type`` column;
the checkpoints that made a volume's tunes (ids from the rows, names from the generate run's
manifest) are named on its title page, in its ABC header and in its report.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from folkrnn.pipeline.midi import MIDI_PREFIX, MidiFiles, make_midi
from folkrnn.pipeline.typeset import TYPESET_PREFIX, Typeset, typeset_volume
from folkrnn.schemas.files import atomic_write, write_parquet
from folkrnn.schemas.tables import (
    CORPUS,
    FINDINGS,
    GENERATED,
    LATER_GENERATED_COLUMNS,
    VALIDATED,
    findings_table,
)
from folkrnn.transforms.abc.keys import KEEP
from folkrnn.transforms.abc.typeset_source import Entry
from folkrnn.transforms.abc.volume import generated_by_text, plain_text, printed_tune, volume_abc
from folkrnn.transforms.titles import title_for
from folkrnn.transforms.tune_types import classify
from folkrnn.transforms.validator import validate_tokens

PER_VOLUME = 3000
DEFAULT_BOOK_TITLE = "The folk-rnn Session Book"
# Part of every volume's input hash: bump it when the ABC, PDF or corpus layout changes, so
# existing volumes are rebuilt instead of being taken as up to date.
FORMAT_VERSION = "2"  # 2: final bar lines, R: and Q:, marks on tunes that are not well-formed, index by type


# --- Volumes -------------------------------------------------------------------------------------
def volume_ranges(numbers: Iterable[int], per_volume: int = PER_VOLUME) -> list[tuple[int, int]]:
    """(first, last) tune number of each volume: sorted numbers cut into runs of ``per_volume``.

    ``volume_ranges(range(1, 30001))`` is ten volumes, (1, 3000), (3001, 6000) ... Raises
    ValueError on a repeated number: a tune number names one tune.
    """
    if per_volume < 1:
        raise ValueError(f"tunes per volume must be at least 1, got {per_volume}")
    ordered = sorted(int(n) for n in numbers)
    for a, b in zip(ordered, ordered[1:]):
        if a == b:
            raise ValueError(f"tune number {a} appears more than once")
    return [(ordered[i], ordered[min(i + per_volume, len(ordered)) - 1]) for i in range(0, len(ordered), per_volume)]


def volume_stem(volume: int, n_volumes: int) -> str:
    """File name stem of a volume, e.g. ``folkrnn-volume-03``."""
    return f"folkrnn-volume-{volume:0{max(2, len(str(n_volumes)))}d}"


# --- Rows in, corpus out ------------------------------------------------------------------------
def missing_columns(schema: pa.Schema) -> list[str]:
    """GENERATED columns a dataset lacks (findings may be missing: they are computed)."""
    return [f.name for f in GENERATED if f.name not in schema.names and f.name not in LATER_GENERATED_COLUMNS]


def validated_table(table: pa.Table) -> pa.Table:
    """``table`` (GENERATED columns) with the validator's findings columns, as VALIDATED.

    Findings already present are kept; when any findings column is missing, all are computed
    with ``folkrnn.transforms.validator.validate_tokens`` from the tokens and the truncated flag.
    """
    for name in LATER_GENERATED_COLUMNS:
        if name not in table.schema.names:
            table = table.append_column(GENERATED.field(name), pa.nulls(table.num_rows, GENERATED.field(name).type))
    if all(name in table.schema.names for name in FINDINGS.names):
        return table.select(VALIDATED.names).cast(VALIDATED)
    tokens = table.column("tokens").to_pylist()
    truncated = table.column("truncated").to_pylist()
    findings = findings_table([validate_tokens(t or [], bool(c)) for t, c in zip(tokens, truncated)])
    columns = {name: table.column(name) for name in GENERATED.names}
    columns.update({name: findings.column(name) for name in FINDINGS.names})
    return pa.table(columns, schema=VALIDATED)


def with_titles_and_abc(table: pa.Table, key: str = KEEP) -> pa.Table:
    """The rows as printed: each tune's type as a ``tune_type`` column, missing or machine-made
    titles as ``title_for(number, meter, type)`` and ``abc`` rewritten as its block in the volume.

    The corpus's ``abc`` is exactly the tune's block in its volume, whatever the input held; a
    title the input gave that is not ``title_for``'s is kept. A ``key`` column says the key each tune
    is printed in (``key`` is compile's ``--key`` choice).
    """
    numbers = table.column("number").to_pylist()
    meters = table.column("meter").to_pylist()
    tokens = table.column("tokens").to_pylist()
    kinds = [classify(t or []) for t in tokens]
    titles = [plain_text(t) if t and t != title_for(n, m) else title_for(n, m, k.name if k else None)
              for t, n, m, k in zip(table.column("title").to_pylist(), numbers, meters, kinds)]
    marks = table.select(["valid", "reasons", "problems", "pickup"]).to_pylist()
    printed = [printed_tune({"number": n, "title": t, "tokens": k, "kind": kind, **mark}, key)
               for n, t, k, kind, mark in zip(numbers, titles, tokens, kinds, marks)]
    abc = [block for block, _ in printed]
    table = table.set_column(table.schema.get_field_index("title"), table.schema.field("title"),
                             pa.array(titles, pa.string()))
    table = table.set_column(table.schema.get_field_index("abc"), table.schema.field("abc"), pa.array(abc, pa.string()))
    table = table.append_column(CORPUS.field("tune_type"), pa.array([k.name if k else None for k in kinds], pa.string()))
    return table.append_column(CORPUS.field("key"), pa.array([name for _, name in printed], pa.string()))


def checkpoints_of(table: pa.Table, names: Mapping[str, str]) -> list[dict]:
    """The checkpoints that made the rows: id, name (``names[id]``, None when unknown) and how
    many tunes, in id order."""
    counts = pc.value_counts(table.column("checkpoint_id")).to_pylist()
    return [{"id": c["values"], "name": names.get(c["values"]) if c["values"] else None, "tunes": c["counts"]}
            for c in sorted(counts, key=lambda c: c["values"] or "")]


def sort_by_number(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("number", "ascending")])).combine_chunks()


def split_volumes(table: pa.Table, per_volume: int = PER_VOLUME) -> list[pa.Table]:
    """The table (any order) as volumes of ``per_volume`` tunes in number order."""
    volume_ranges(table.column("number").to_pylist(), per_volume)  # raises on repeated numbers
    ordered = sort_by_number(table)
    return [ordered.slice(i, per_volume).combine_chunks() for i in range(0, ordered.num_rows, per_volume)]


def input_hash(table: pa.Table, **options: object) -> str:
    """SHA-256 of a volume's rows (Arrow IPC bytes) and the options that shape its outputs."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **options}, sort_keys=True).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def corpus_partition(out_dir: str, volume: int) -> str:
    return os.path.join(out_dir, "corpus", f"volume={volume}", "part-0.parquet")


def write_corpus_partition(table: pa.Table, pages: Mapping[int, int] | None, path: str) -> None:
    """A volume's rows with their page as ``corpus/volume=V/part-0.parquet`` (schema CORPUS)."""
    page = pa.array([(pages or {}).get(n) for n in table.column("number").to_pylist()], pa.int32())
    corpus = table.select([*VALIDATED.names, "tune_type"]).append_column(CORPUS.field("page"), page)
    corpus = corpus.append_column(CORPUS.field("key"), table.column("key")).cast(CORPUS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_parquet(path, corpus)


# Temporary names in the output folder: what atomic_write makes for volume files and corpus
# partitions, the typesetting work folders, and the MIDI folders being filled or replaced.
LEFTOVER_PATTERNS = (
    os.path.join("volumes", ".folkrnn-volume-*.tmp"),
    os.path.join("volumes", TYPESET_PREFIX + "*"),
    os.path.join("volumes", "midi", MIDI_PREFIX + "*"),
    os.path.join("corpus", "volume=*", ".part-0.parquet.*.tmp"),
)


def remove_leftovers(out_dir: str) -> list[str]:
    """Remove the temporary files and folders a killed run left in ``out_dir``; returns them.

    Only safe while no other run writes there (``folkrnn compile`` holds a lock on the folder).
    """
    found = [p for pattern in LEFTOVER_PATTERNS for p in glob.glob(os.path.join(glob.escape(out_dir), pattern))]
    for path in found:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    return found


# --- One volume, start to finish ----------------------------------------------------------------
@dataclass
class VolumeJob:
    """Everything one worker needs to build one volume (picklable: it crosses a process pool)."""

    table: pa.Table  # VALIDATED rows of the volume as read, in number order
    volume: int
    n_volumes: int
    book_title: str
    out_dir: str
    pdf: bool = True
    midi: bool = False
    input_hash: str = ""
    checkpoint_names: dict[str, str] = field(default_factory=dict)  # checkpoint id -> name (the manifest's)
    key: str = KEEP  # compile's --key choice: KEEP prints the tunes in C, as generated

    @property
    def stem(self) -> str:
        return os.path.join(self.out_dir, "volumes", volume_stem(self.volume, self.n_volumes))

    @property
    def midi_dir(self) -> str:
        return os.path.join(self.out_dir, "volumes", "midi", os.path.basename(self.stem))


def read_report(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def up_to_date(job: VolumeJob) -> bool:
    """The volume's outputs exist and were made from these rows with these options."""
    report = read_report(job.stem + ".report.json")
    if not report or report.get("input_hash") != job.input_hash:
        return False
    needed = [job.stem + ".abc", corpus_partition(job.out_dir, job.volume)]
    needed += [job.stem + ".pdf"] if job.pdf else []
    needed += [job.midi_dir] if job.midi else []
    if not all(os.path.exists(p) for p in needed):
        return False
    with open(job.stem + ".abc", "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest() == report.get("abc_sha256")


def build_volume(job: VolumeJob) -> dict:
    """Write the volume's ABC, PDF, MIDI, corpus partition and report; returns the report.

    The report is written last: a volume without a current report is rebuilt by the next run.
    """
    timings: dict[str, float] = {}
    began = start = time.perf_counter()
    table = with_titles_and_abc(job.table, job.key)
    rows = table.select(["number", "title", "meter", "mode", "valid", "tune_type", "key"]).to_pylist()
    checkpoints = checkpoints_of(table, job.checkpoint_names)
    generated_by = generated_by_text([(c["name"], c["id"]) for c in checkpoints])
    abc_text = volume_abc(rows, job.volume, job.n_volumes, job.book_title, blocks=table.column("abc").to_pylist(),
                          generated_by=generated_by)
    os.makedirs(os.path.dirname(job.stem), exist_ok=True)
    atomic_write(job.stem + ".abc", abc_text)
    timings["abc"] = time.perf_counter() - start
    typeset: Typeset | None = None
    if job.pdf:
        start = time.perf_counter()
        entries = [Entry(r["number"], r["title"], r["meter"] or "", r["mode"] or "", r["valid"] is not False,
                         r["tune_type"] or "", r["key"] or "") for r in rows]
        typeset = typeset_volume(abc_text, job.stem + ".pdf", volume=job.volume, n_volumes=job.n_volumes,
                                 book_title=job.book_title, entries=entries, generated_by=generated_by)
        timings["pdf"] = time.perf_counter() - start
        timings.update({k: round(v, 3) for k, v in typeset.seconds.items()})
    elif os.path.exists(job.stem + ".pdf"):
        os.remove(job.stem + ".pdf")  # a PDF of other inputs would contradict the new ABC
    midi = None
    if job.midi:
        start = time.perf_counter()
        midi = make_midi(abc_text, job.midi_dir)
        timings["midi"] = time.perf_counter() - start
    start = time.perf_counter()
    write_corpus_partition(table, typeset.pages if typeset else None, corpus_partition(job.out_dir, job.volume))
    timings["corpus"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - began
    report = volume_report(job, rows, abc_text, typeset, midi, timings)
    report.update(generated_by=generated_by, checkpoints=checkpoints,
                  tune_types=dict(sorted(Counter(r["tune_type"] or "none" for r in rows).items())))
    atomic_write(job.stem + ".report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


def volume_report(job: VolumeJob, rows: list[dict], abc_text: str, typeset: Typeset | None, midi: MidiFiles | None,
                  timings: dict[str, float]) -> dict:
    """Per-tune abcm2ps and abc2midi messages, with the counts a reader checks first."""
    by_number = {r["number"]: r for r in rows}
    tunes: dict[int, dict] = {}
    other: list[dict] = []
    for tool, messages in (("abcm2ps", typeset.messages if typeset else []), ("abc2midi", midi.messages if midi else [])):
        for m in messages:
            if m["number"] is None or m["number"] not in by_number:
                other.append({"tool": tool, **m})
                continue
            row = by_number[m["number"]]
            entry = tunes.setdefault(m["number"], {"number": m["number"], "title": row["title"], "valid": row["valid"],
                                                   "abcm2ps": [], "abc2midi": []})
            entry[tool].append({k: m[k] for k in ("level", "line", "column", "message")})

    def count(tool: str, level: str, valid_only: bool = False) -> int:
        return sum(1 for t in tunes.values() if any(m["level"] == level for m in t[tool])
                   and (t["valid"] or not valid_only))

    missing = [r["number"] for r in rows if typeset and r["number"] not in typeset.pages]
    return {
        "volume": job.volume,
        "volumes": job.n_volumes,
        "book_title": job.book_title,
        "tunes": len(rows),
        "first": rows[0]["number"] if rows else None,
        "last": rows[-1]["number"] if rows else None,
        "valid_tunes": sum(1 for r in rows if r["valid"]),
        "input_hash": job.input_hash,
        "abc_sha256": hashlib.sha256(abc_text.encode("utf-8")).hexdigest(),
        "pdf": bool(typeset),
        "pages": typeset.page_count if typeset else None,
        "front_pages": typeset.front_pages if typeset else None,
        "abcm2ps_exit": typeset.returncode if typeset else None,
        "tunes_not_typeset": missing,
        "tunes_with_abcm2ps_errors": count("abcm2ps", "error"),
        "valid_tunes_with_abcm2ps_errors": count("abcm2ps", "error", valid_only=True),
        "tunes_with_abcm2ps_warnings": count("abcm2ps", "warning"),
        "midi_files": midi.count if midi else None,
        "tunes_without_midi": midi.missing if midi else [],
        "tunes_with_abc2midi_errors": count("abc2midi", "error"),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "messages": [tunes[n] for n in sorted(tunes)],
        "other_messages": other,
    }
