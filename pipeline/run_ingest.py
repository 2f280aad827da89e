"""Build and run the ingest pipeline (sources -> IngestTunes -> Parquet tables + summary.json)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.options import pipeline_options
from schemas.tables import INGEST_TABLES
from transforms import ingest as ingest_transforms
from transforms.ingest import (
    DUPLICATES,
    REJECTS,
    IngestTunes,
    SummaryFn,
    WriteTable,
    outcome_events,
    remove_stale_shards,
    write_json_atomic,
)
from transforms.sources import ReadAbcFiles, ReadFolkRnnText, ReadMusic21Corpus, ReadTabularDump

TABULAR_SUFFIXES = (".csv", ".json", ".jsonl")


@dataclass
class IngestPlan:
    """What to read: sorted out by kind, so each goes to its own source transform."""

    abc: list[str] = field(default_factory=list)
    folkrnn_text: list[str] = field(default_factory=list)
    dumps: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.abc or self.folkrnn_text or self.dumps or self.urls)


def plan_sources(sources: Sequence[str], fmt: str = "abc", url_lists: Sequence[str] = ()) -> IngestPlan:
    plan = IngestPlan()
    for source in sources:
        if source.startswith(("http://", "https://")):
            plan.urls.append(source)
        elif source.lower().endswith(TABULAR_SUFFIXES):
            plan.dumps.append(source)
        elif fmt == "folkrnn-text":
            plan.folkrnn_text.append(source)
        else:
            plan.abc.append(source)
    for url_list in url_lists:
        from transforms.scrape import read_url_list

        plan.urls.extend(read_url_list(url_list))
    return plan


def build_ingest(pipeline: beam.Pipeline, plan: IngestPlan, out: str, *, valid_fraction: float = 0.05,
                 num_shards: int = 1, cache_dir: str | None = None, delay: float = 1.0,
                 per_host: int = 1, timeout: float = 30.0, follow_offsite: bool = False) -> None:
    """Add the whole ingest to ``pipeline``: read, process, write the tables and summary.json."""
    tunes, source_rejects = [], []

    def add(label: str, outputs: dict) -> None:
        tunes.append(outputs["tunes"])
        source_rejects.append(outputs[REJECTS])

    if plan.empty:
        add("Music21", pipeline | "ReadMusic21Corpus" >> ReadMusic21Corpus())
    if plan.abc:
        add("Abc", pipeline | "ReadAbcFiles" >> ReadAbcFiles(plan.abc))
    if plan.dumps:
        add("Dumps", pipeline | "ReadTabularDumps" >> ReadTabularDump(plan.dumps))
    if plan.folkrnn_text:
        add("FolkRnn", pipeline | "ReadFolkRnnText" >> ReadFolkRnnText(plan.folkrnn_text))
    if plan.urls:
        from pipeline.beam.scrape import ScrapeAbc
        from transforms.sources import tunes_of_document

        scraped = (
            pipeline
            | "Urls" >> beam.Create(sorted(set(plan.urls)))
            | "Scrape" >> ScrapeAbc(cache_dir=cache_dir or os.path.join(out, "http-cache"),
                                    delay=delay, per_host_concurrency=per_host,
                                    timeout=timeout, follow_offsite=follow_offsite)
        )

        def split_document(doc: dict):
            data = doc["text"].encode("utf-8")
            for record in tunes_of_document(doc["source"], doc["collection"], data, doc["encoding"]):
                if isinstance(record, dict):
                    yield beam.pvalue.TaggedOutput(REJECTS, record)
                else:
                    yield record

        split = scraped.documents | "SplitScraped" >> beam.FlatMap(split_document).with_outputs(
            REJECTS, main="tunes")
        tunes.append(split.tunes)
        source_rejects.extend([scraped.rejects, split[REJECTS]])

    raw = tunes | "AllRawTunes" >> beam.Flatten()
    read_rejects = source_rejects | "AllSourceRejects" >> beam.Flatten()
    processed = raw | "Ingest" >> IngestTunes(valid_fraction)
    rejects = (read_rejects, processed[REJECTS]) | "AllRejects" >> beam.Flatten()

    tables = {"tunes": processed["tunes"], DUPLICATES: processed[DUPLICATES], REJECTS: rejects}
    for name, rows in tables.items():
        rows | f"Write_{name}" >> WriteTable(out, name, INGEST_TABLES[name], num_shards)

    # Counting what came in separately from what went out makes "nothing lost" checkable.
    events = [
        raw | "ReadEvents" >> beam.Map(lambda t: ("read", t.collection)),
        read_rejects | "ReadRejectEvents" >> beam.Map(lambda r: ("read", r["collection"])),
    ] + [rows | f"Events_{name}" >> beam.Map(outcome_events(name)) for name, rows in tables.items()]
    summary_path = FileSystems.join(out, "summary.json")
    (
        events
        | "AllEvents" >> beam.Flatten()
        | "Summarize" >> beam.CombineGlobally(SummaryFn())
        | "WriteSummary" >> beam.Map(lambda s: write_json_atomic(summary_path, s))
    )


def run_ingest(args: argparse.Namespace) -> dict:
    """Run ``folkrnn ingest`` with parsed arguments; returns the summary."""
    import json

    from tqdm import tqdm

    plan = plan_sources(args.sources, args.format, args.url_list)
    out = args.out
    FileSystems.mkdirs(out) if not FileSystems.exists(out) else None
    for name in INGEST_TABLES:
        directory = FileSystems.join(out, name)
        if not FileSystems.exists(directory):
            FileSystems.mkdirs(directory)
        remove_stale_shards(out, name)
    options = pipeline_options(args.beam_args)
    progress = None if args.quiet else tqdm(desc="ingest", unit=" tunes", smoothing=0.1)
    ingest_transforms.PROGRESS = progress
    try:
        with beam.Pipeline(options=options) as pipeline:
            build_ingest(pipeline, plan, out, valid_fraction=args.valid_fraction, num_shards=args.num_shards,
                         cache_dir=args.cache_dir, delay=args.delay, per_host=args.per_host,
                         timeout=getattr(args, "timeout", 30.0),  # getattr: benchmarks build args by hand
                         follow_offsite=getattr(args, "follow_offsite", False))
    finally:
        ingest_transforms.PROGRESS = None
        if progress is not None:
            progress.close()
    with FileSystems.open(FileSystems.join(out, "summary.json")) as handle:
        summary = json.loads(handle.read().decode("utf-8"))
    if args.write_folkrnn_text:
        write_folkrnn_text_file(out)
    return summary


def write_folkrnn_text_file(out: str) -> str:
    import pyarrow.parquet as pq

    from transforms.abc.split import write_folkrnn_text

    table = pq.read_table(os.path.join(out, "tunes"), columns=["id", "tokens"]).sort_by("id")
    path = os.path.join(out, "tunes.folkrnn.txt")
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(write_folkrnn_text(table.column("tokens").to_pylist()))
    os.replace(temporary, path)
    return path
