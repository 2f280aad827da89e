"""``folkrnn demo``: the main job on the embedded default data, one stage after another.

ingest (music21's collections) -> generate 30,000 tunes with the shipped dance-tune model,
well-formed by construction (``--plain``: as the model writes them, like the original books) ->
validate -> ten volumes of 3,000 tunes as ABC and PDF in session keys, a MIDI file per tune, and
the corpus as a hive-partitioned Parquet dataset.
Each stage keeps what an earlier run finished, so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

HELP = "Run the main job on the bundled data: ingest, generate 30,000 tunes, validate, ten volumes (make demo)"
DEMO_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model", "demo.pt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--checkpoint", default=DEMO_CHECKPOINT, help="model to sample (default: model/demo.pt)")
    parser.add_argument("--num-tunes", type=int, default=30000, help="tunes to generate (default 30000)")
    parser.add_argument("--per-volume", type=int, default=3000, help="tunes per volume (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="generation processes (default: one per usable core, each with one torch thread)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per generation process (default 0: 1 with several workers, else "
                             "torch's choice)")
    parser.add_argument("--plain", action="store_true",
                        help="sample as the model writes, without --well-formed (as the original folk-rnn books: "
                             "about a fifth of the tunes then fail the validator)")
    parser.add_argument("--key", default="session", metavar="session|C|TONIC",
                        help="key the books print the tunes in (default session; C: as generated)")
    parser.add_argument("--no-pdf", action="store_true", help="volumes as ABC only")
    parser.add_argument("--no-midi", action="store_true", help="no MIDI file per tune")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_command(name: str, argv: list[str]) -> int:
    """Run a folkrnn subcommand in this process, with the defaults its own parser gives."""
    import importlib

    from folkrnn.pipeline.cli import COMMANDS

    module = importlib.import_module(COMMANDS[name])
    parser = argparse.ArgumentParser(prog=f"folkrnn {name}")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    args.beam_args = []
    return int(module.run(args) or 0)


def source_fingerprint() -> str:
    """A hash of the code that shapes the ingest's output: a changed tokenizer means a new ingest."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder in ("transforms", "schemas"):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, folder))):
            for name in sorted(files):
                if name.endswith(".py"):
                    with open(os.path.join(dirpath, name), "rb") as handle:
                        digest.update(name.encode() + handle.read())
    return digest.hexdigest()[:16]


def summary_is_current(summary_path: str, shards: str) -> bool:
    """The validation summary was written after every shard (validate writes it last), so the
    findings in the shards are those of the current tunes."""
    if not os.path.exists(summary_path) or not os.path.isdir(shards):
        return False
    written = os.path.getmtime(summary_path)
    parts = [os.path.join(shards, f) for f in os.listdir(shards) if f.endswith(".parquet")]
    return bool(parts) and all(os.path.getmtime(p) <= written for p in parts)


def run(args: argparse.Namespace) -> int:
    from folkrnn.schemas.errors import UsageError

    if args.threads < 0:
        raise UsageError(f"--threads must be 0 (torch's choice) or more, got {args.threads}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if not os.path.exists(args.checkpoint):
        raise UsageError(f"no model at {args.checkpoint}; train one with `folkrnn train` and pass --checkpoint")
    quiet = ["--quiet"] if args.quiet else []
    out = args.out
    paths = {name: os.path.join(out, name) for name in ("ingest", "generated", "compiled")}
    timings: list[tuple[str, float]] = []

    def stage(number: int, name: str, what: str):
        print(f"\n[{number}/4] {name}: {what}", flush=True)
        return time.perf_counter()

    start = stage(1, "ingest", f"music21's ABC collections -> {paths['ingest']}")
    stamp_path = os.path.join(paths["ingest"], "demo-stamp.json")
    stamp = {"code": source_fingerprint()}
    if os.path.exists(stamp_path) and json.load(open(stamp_path)) == stamp:
        print("  already done (same code): kept")
        from folkrnn.pipeline.ingest import format_summary, load_summary

        print(format_summary(load_summary(paths["ingest"]), paths["ingest"]))
    else:
        run_command("ingest", ["--out", paths["ingest"], *quiet])
        from folkrnn.schemas.files import atomic_write

        atomic_write(stamp_path, json.dumps(stamp))
    timings.append(("ingest", time.perf_counter() - start))

    how = "as the model writes them" if args.plain else "well-formed by construction"
    start = stage(2, "generate", f"{args.num_tunes} tunes with {os.path.relpath(args.checkpoint)}, {how} -> "
                                 f"{paths['generated']}")
    run_command("generate", [args.checkpoint, "--out", paths["generated"], "--num-tunes", str(args.num_tunes),
                             "--seed", str(args.seed), "--threads", str(args.threads),
                             *(["--workers", str(args.workers)] if args.workers else []),
                             *([] if args.plain else ["--well-formed"]), *quiet])
    timings.append(("generate", time.perf_counter() - start))

    start = stage(3, "validate", "bars, repeats, sections and cadences of every tune")
    shards = os.path.join(paths["generated"], "generated")
    summary_path = os.path.join(paths["generated"], "validation-summary.json")
    if summary_is_current(summary_path, shards):
        from folkrnn.transforms.validator import format_summary

        print("  already done (no shard changed since): kept")
        with open(summary_path, encoding="utf-8") as handle:
            print(format_summary(json.load(handle)))
    else:
        run_command("validate", [shards, "--json", summary_path, *quiet])
    timings.append(("validate", time.perf_counter() - start))

    start = stage(4, "compile", f"volumes of {args.per_volume} tunes as ABC" + ("" if args.no_pdf else " and PDF")
                  + ("" if args.no_midi else ", MIDI") + f" (key: {args.key}), and the corpus -> {paths['compiled']}")
    run_command("compile", [shards, "--out", paths["compiled"], "--per-volume", str(args.per_volume),
                            "--key", args.key, *(["--no-pdf"] if args.no_pdf else []),
                            *([] if args.no_midi else ["--midi"]), *quiet])
    timings.append(("compile", time.perf_counter() - start))

    print_closing(paths, summary_path, timings)
    return 0


def print_closing(paths: dict, summary_path: str, timings: list[tuple[str, float]]) -> None:
    with open(summary_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    valid = summary.get("valid_fraction")
    volumes = os.path.join(paths["compiled"], "volumes")
    pdfs = sorted(f for f in os.listdir(volumes) if f.endswith(".pdf")) if os.path.isdir(volumes) else []
    corpus = os.path.join(paths["compiled"], "corpus")
    print("\n" + "=" * 72)
    print("folkrnn demo: done")
    print(f"  training corpus     {paths['ingest']}/tunes/ (Parquet), summary.json")
    print(f"  generated tunes     {paths['generated']}/generated/ (Parquet shards), manifest.json")
    midi = os.path.join(volumes, "midi")
    n_midi = sum(len(files) for _, _, files in os.walk(midi)) if os.path.isdir(midi) else 0
    print(f"  tune books          {volumes}/ ({len(pdfs)} PDF volumes, ABC, reports)")
    if n_midi:
        print(f"  MIDI                {midi}/ ({n_midi:,} files, one a tune)")
    print(f"  corpus (Arrow)      {corpus}/volume=N/ (hive-partitioned Parquet)")
    if valid is not None:
        print(f"  valid rate          {100 * valid:.1f}% of {summary.get('tunes')} generated tunes pass the validator")
    print("  stage times         " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings))
    print("\nTry:")
    print(f"  .venv/bin/folkrnn query {corpus} --where \"tune_type = 'jig' AND mode = 'dor'\" "
          "--columns number,title,key,volume,page --limit 5")
    print(f"  .venv/bin/folkrnn query {corpus} --where \"number = 488\" --format abc")
    print(f"  .venv/bin/folkrnn query {corpus} --where \"standard_form AND ends_on_tonic\" "
          "--columns number,title,form --limit 5")
    print(f"  .venv/bin/folkrnn play {corpus} --numbers 488          # -> tune-488.ogg, to listen to")
    print("\nLook and listen (a local web page: browse, notation, audio, compose):")
    print(f"  {serve_command(corpus, paths['generated'])}")


def serve_command(corpus: str, generated: str) -> str:
    """The ``folkrnn serve`` command that opens the demo's books and generated tunes in a browser."""
    return f".venv/bin/folkrnn serve {corpus} {generated}   # then open http://127.0.0.1:8000/"
