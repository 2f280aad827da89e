"""``folkrnn demo``: the main job on the embedded default data, one stage after another."""

from __future__ import annotations

import argparse
import os
import time

HELP = "Run the whole pipeline on the bundled music21 collections (what `make demo` runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pipeline.ingest import format_summary
    from pipeline.run_ingest import run_ingest

    timings = []
    start = time.perf_counter()
    ingest_out = os.path.join(args.out, "ingest")
    print(f"[1/1] ingest: music21's ABC collections -> {ingest_out}", flush=True)
    summary = run_ingest(argparse.Namespace(
        sources=[], format="abc", url_list=[], out=ingest_out, valid_fraction=0.05, num_shards=1, cache_dir=None,
        delay=1.0, per_host=1, write_folkrnn_text=True, quiet=args.quiet, beam_args=[]))
    timings.append(("ingest", time.perf_counter() - start))
    print(format_summary(summary, ingest_out))
    print()
    print("stage times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings))
    print("look inside: .venv/bin/python -c \"import pyarrow.parquet as pq; "
          f"print(pq.read_table('{ingest_out}/tunes', columns=['title', 'meter', 'mode']).slice(0, 5))\"")
    return 0
