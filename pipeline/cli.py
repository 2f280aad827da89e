"""The ``folkrnn`` command: one thin subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Those modules import heavy dependencies (torch, beam) inside ``run``,
so ``--help`` stays fast and a stage loads only what it needs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import UsageError

# command name -> module that implements it
COMMANDS: dict[str, str] = {
    "ingest": "pipeline.ingest",
    "train": "pipeline.train",
    "import-folkrnn": "pipeline.importer",
    "generate": "pipeline.generate",
    "validate": "pipeline.validate",
    "compare": "pipeline.compare",
    "compile": "pipeline.compile",
    "query": "pipeline.query",
    "stats": "pipeline.stats",
    "analyze": "pipeline.analyze",
    "demo": "pipeline.demo",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="folkrnn",
        description="Learn, generate, validate and study folk tunes in ABC notation (folk-rnn v2).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
    return parser, modules


def _drop_optional_gcp_notice(record: logging.LogRecord) -> bool:
    # Beam logs this on import when its optional GCP extra is absent; local runs do not need it.
    return "apitools not found" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.getLogger().addFilter(_drop_optional_gcp_notice)
    parser, modules = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = modules[args.command]
    if extra and not getattr(module, "ACCEPTS_BEAM_FLAGS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    try:
        return int(module.run(args) or 0)
    except UsageError as err:
        print(f"folkrnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"folkrnn {args.command}: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
