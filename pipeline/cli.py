"""The ``folkrnn`` command: one thin subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Those modules import heavy dependencies (torch, beam) inside ``run``,
so ``--help`` stays fast and a stage loads only what it needs.

Every mistake ends as one line on stderr (``folkrnn CMD: error: ...``) and exit code 2: argparse
errors, ``UsageError`` from a stage, and I/O failures (path and cause). Commands that run Beam
pipelines (``ACCEPTS_BEAM_FLAGS``) also take Beam's own flags, checked against Beam's option
classes, so a misspelt flag is an error rather than silently ignored.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from folkrnn.schemas.errors import UsageError, describe_os_error

# command name -> module that implements it
COMMANDS: dict[str, str] = {
    "ingest": "folkrnn.pipeline.ingest",
    "train": "folkrnn.pipeline.train",
    "import-folkrnn": "folkrnn.pipeline.importer",
    "generate": "folkrnn.pipeline.generate",
    "validate": "folkrnn.pipeline.validate",
    "compare": "folkrnn.pipeline.compare",
    "compile": "folkrnn.pipeline.compile",
    "play": "folkrnn.pipeline.play",
    "query": "folkrnn.pipeline.query",
    "stats": "folkrnn.pipeline.stats",
    "analyze": "folkrnn.pipeline.analyze",
    "serve": "folkrnn.pipeline.serve",
    "demo": "folkrnn.pipeline.demo",
}

# Set to see the traceback of an unexpected error instead of its one-line summary.
TRACEBACK_VARIABLE = "FOLKRNN_TRACEBACK"


class OneLineError(Exception):
    """An argparse error, carried to ``main`` so that it prints as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line naming the command and how to get help (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise OneLineError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> tuple[ArgumentParser, dict[str, object], dict[str, ArgumentParser]]:
    parser = ArgumentParser(
        prog="folkrnn",
        description="Learn, generate, validate and study folk tunes in ABC notation (folk-rnn v2).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules, parsers = {}, {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        parsers[name] = p
    return parser, modules, parsers


def beam_option_parser() -> argparse.ArgumentParser:
    """A parser that knows every flag of Beam's option classes (standard, GCP, worker, SDK ...)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - Beam's own way of collecting its flags
    return parser


def split_beam_flags(argv: list[str], own: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Split a subcommand's arguments into (its own, Beam's).

    A ``--flag`` the subcommand does not define but one of Beam's option classes does is Beam's,
    with its value; everything else stays with the subcommand's parser, which rejects what it
    does not know. Beam is only imported when some flag is not the subcommand's own.
    """
    own_flags = set(own._option_string_actions)  # noqa: SLF001
    if not any(a.startswith("--") and a.split("=", 1)[0] not in own_flags for a in argv):
        return list(argv), []
    beam_actions = beam_option_parser()._option_string_actions  # noqa: SLF001
    mine, beams = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            mine.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        action = beam_actions.get(name) if arg.startswith("--") and name not in own_flags else None
        if action is None:
            mine.append(arg)
            i += 1
            continue
        beams.append(arg)
        i += 1
        if "=" in arg or action.nargs == 0:
            continue
        takes_many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
        while i < len(argv) and not argv[i].startswith("-"):
            beams.append(argv[i])
            i += 1
            if not takes_many:
                break
    return mine, beams


def _drop_optional_gcp_notice(record: logging.LogRecord) -> bool:
    # Beam logs this on import when its optional GCP extra is absent; local runs do not need it.
    return "apitools not found" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.getLogger().addFilter(_drop_optional_gcp_notice)
    parser, modules, parsers = build_parser()
    command = argv[0] if argv and argv[0] in modules else None
    try:
        beam_args: list[str] = []
        if command is not None and getattr(modules[command], "ACCEPTS_BEAM_FLAGS", False):
            own, beam_args = split_beam_flags(argv[1:], parsers[command])
            argv = [command, *own]
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            (parsers.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    except OneLineError as err:
        print(err, file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    args.beam_args = beam_args
    return run_command(args.command, modules[args.command], args, parsers[args.command])


def flag_names(parser: argparse.ArgumentParser | None) -> Callable[[str], str]:
    """A setting's name (a parser dest, ``valid_fraction``) -> its flag (``--valid-fraction``)."""
    flags = {action.dest: max(action.option_strings, key=len)
             for action in (parser._actions if parser else []) if action.option_strings}  # noqa: SLF001
    return lambda name: flags.get(name, "--" + name.replace("_", "-"))


def run_command(name: str, module, args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one subcommand; whatever goes wrong is one line on stderr."""
    try:
        if getattr(args, "beam_args", None):
            from folkrnn.pipeline.beam.options import check_dataflow

            check_dataflow(args.beam_args)  # before the command writes anything
        return int(module.run(args) or 0)
    except UsageError as err:
        print(f"folkrnn {name}: error: {err.render(flag_names(parser))}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"folkrnn {name}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"folkrnn {name}: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug still gets one line; the traceback is on request
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        detail = " ".join(str(err).split())[:300]
        print(f"folkrnn {name}: error: unexpected {type(err).__name__}: {detail} (a bug: re-run with "
              f"{TRACEBACK_VARIABLE}=1 for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
