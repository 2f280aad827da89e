"""``folkrnn ingest``: ABC collections -> tunes, duplicates and rejects as Parquet, plus a summary."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

from folkrnn.schemas.errors import UsageError
from folkrnn.transforms.byte_ranges import SPLIT_SIZE

HELP = "Scrape, clean, transpose to C and tokenize ABC collections into Parquet (a Beam pipeline)"
ACCEPTS_BEAM_FLAGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="*", metavar="SOURCE",
        help="ABC files, folders or globs (local or gs://), http(s) URLs, CSV/JSON dumps, folk-rnn text "
             "files (with --format folkrnn-text). None: the ABC collections shipped with music21.")
    parser.add_argument("--out", default="out/ingest", help="output folder (default: out/ingest)")
    parser.add_argument("--format", choices=["abc", "folkrnn-text"], default="abc",
                        help="how to read file sources (default: abc; CSV/JSON dumps are recognised by suffix)")
    parser.add_argument("--url-list", action="append", default=[], metavar="FILE",
                        help="a file of URLs to scrape, one a line (repeatable)")
    parser.add_argument("--valid-fraction", type=float, default=0.05,
                        help="share of tunes in the validation split, by a hash of the id (default 0.05)")
    parser.add_argument("--num-shards", type=int, default=1, help="Parquet shards per table (default 1)")
    parser.add_argument("--cache-dir", default=None,
                        help="scraping response cache (default: OUT/http-cache); a re-run fetches nothing twice")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between requests to one host")
    parser.add_argument("--per-host", type=int, default=1, help="concurrent requests per host (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds one request may take in all: connect, redirects, headers and body (default 30)")
    parser.add_argument("--follow-offsite", action="store_true",
                        help="follow redirects to another host or port (default: such a URL is a reject)")
    parser.add_argument("--write-folkrnn-text", action="store_true",
                        help="also write the kept tunes as OUT/tunes.folkrnn.txt (the folk-rnn layout)")
    parser.add_argument("--split-size", type=byte_size, default=SPLIT_SIZE, metavar="BYTES",
                        help="a file larger than this is read in ranges of about this size by several workers "
                             "at once, with the same result (default 8M; 0: every file whole). A JSON array "
                             "or a compressed file is always read whole")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.epilog = ("Any Beam flag passes through, e.g. --runner DataflowRunner --project P --region R "
                     "--temp_location gs://B/tmp --setup_file ./setup.py")


def byte_size(text: str) -> int:
    """``"32M"``, ``"1G"``, ``"512K"`` or a number of bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 32M, 1G, 0)")
    return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2) or " "))


def check_arguments(args: argparse.Namespace) -> None:
    if not 0 <= args.valid_fraction < 1:
        raise UsageError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    if args.num_shards < 1:
        raise UsageError(f"--num-shards must be at least 1, got {args.num_shards}")
    check_scrape_arguments(args)
    for source in args.sources:
        local = "://" not in source
        if local and not any(ch in source for ch in "*?[") and not os.path.exists(source):
            raise UsageError(f"no such file or folder: {source} (give ABC files, folders, globs or URLs)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a file, not a folder: give a folder for the tables")
    for url_list in args.url_list:
        if not os.path.exists(url_list):
            raise UsageError(f"no such URL list: {url_list}")


def check_scrape_arguments(args: argparse.Namespace) -> None:
    # Written as "not in range" so that NaN (false in every comparison) and inf are refused too.
    if args.per_host < 1:
        raise UsageError(f"--per-host must be at least 1 (requests at a time to one host), got {args.per_host}")
    if not 0 <= args.delay < math.inf:
        raise UsageError(f"--delay must be a finite number of seconds, 0 or more, got {args.delay}")
    if not 0 < args.timeout < math.inf:
        raise UsageError(f"--timeout must be a finite number of seconds, more than 0, got {args.timeout}")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from folkrnn.pipeline.run_ingest import run_ingest

    summary = run_ingest(args)
    print(format_summary(summary, args.out))
    return 0


def format_summary(summary: dict, out: str) -> str:
    lines = [
        f"ingest: {summary['read']} tunes read, {summary['kept']} kept, {summary['duplicates']} duplicates, "
        f"{summary['rejected']} rejected"
        + ("" if summary["read"] == summary["kept"] + summary["duplicates"] + summary["rejected"]
           else "  (COUNTS DO NOT ADD UP)"),
        "",
        f"{'collection':<22}{'read':>8}{'kept':>8}{'dups':>8}{'rejects':>9}{'kept %':>8}",
    ]
    for name, c in summary["by_collection"].items():
        rate = 100 * c["kept"] / c["read"] if c["read"] else 0.0
        lines.append(f"{name:<22}{c['read']:>8}{c['kept']:>8}{c['duplicates']:>8}{c['rejected']:>9}{rate:>7.1f}%")
    if summary["rejects_by_reason"]:
        lines += ["", "rejects by reason: " + ", ".join(f"{k} {v}" for k, v in summary["rejects_by_reason"].items())]
    for path, tunes in summary.get("read_as_folkrnn_text", {}).items():
        lines.append(f"read as folk-rnn text (recognised by its layout): {path} ({tunes} tunes)")
    for path, times in summary.get("repeated_sources", {}).items():
        lines.append(f"named {times} times, read once: {path}")
    lines += ["meters: " + ", ".join(f"{k} {v}" for k, v in summary["meters"].items()),
              "modes: " + ", ".join(f"{k} {v}" for k, v in summary["modes"].items()),
              "", f"written to {out}/: tunes/, duplicates/, rejects/ (Parquet), summary.json"]
    return "\n".join(lines)


def load_summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


if __name__ == "__main__":  # pragma: no cover
    from folkrnn.pipeline.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))
