"""``folkrnn serve``: a local web page to browse the tune books, see and hear any tune, and compose.

folkrnn.org on a laptop, offline: a search of any dataset (a compile corpus, a generate run, an
ingest), a page per tune (notation typeset by abcm2ps, the ABC, the validator's findings, audio
from ``folkrnn play``'s renderer, MIDI and ABC downloads, any session key), and the compose form
(meter, mode, seed, temperature, prime, well-formed, form), sampling with the model kept loaded.

The parts, one concern each: ``library`` (the datasets and their search), ``tunes`` (a tune as
printed), ``media`` (notation, audio, MIDI), ``session`` (the model and compose requests),
``views`` (HTML), ``routes`` (URL -> answer), ``server`` (HTTP). This module is the command; it
imports them in ``run`` so that ``folkrnn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os

HELP = "Serve a local web page: browse and search tune books, see and hear any tune, compose new ones"
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                  "model", "demo.pt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", metavar="DATASET", nargs="*",
                        help="tunes to browse: a compile corpus (out/compiled/corpus), a generate or validate run "
                             "(out/generated), an ingest (out/ingest/tunes); none: compose only")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="the model of the compose page (default: model/demo.pt); 'none' for no compose page")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for composing (default 1: one tune at a time needs no more)")
    parser.epilog = ("Open the address it prints in a browser; Ctrl-C stops it. Nothing is fetched from the "
                     "internet: notation by abcm2ps, audio by abc2midi and fluidsynth, on this computer.")


def build_app(datasets: list[str], checkpoint: str | None, threads: int = 1):
    """The app serving ``datasets`` and composing with ``checkpoint`` (None: no compose page)."""
    from folkrnn.pipeline.serve.library import open_library
    from folkrnn.pipeline.serve.media import Media
    from folkrnn.pipeline.serve.routes import App
    from folkrnn.pipeline.serve.session import Composer

    library = open_library(datasets)
    composer, problem = None, "started with --checkpoint none"
    if checkpoint is not None:
        composer = Composer(checkpoint, threads)
    return App(library, Media(), composer, None if composer else problem)


def check(args: argparse.Namespace) -> str | None:
    """The checkpoint to load (None: none); a UsageError for a setting that cannot work."""
    from folkrnn.schemas.errors import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    if args.threads < 0:
        raise UsageError(f"--threads must be 0 (torch's choice) or more, got {args.threads}")
    if args.checkpoint.strip().lower() == "none":
        return None
    if not os.path.exists(args.checkpoint):
        raise UsageError(f"no checkpoint at {args.checkpoint} (give one from folkrnn train, or --checkpoint none "
                         "to browse without composing)")
    return args.checkpoint


def run(args: argparse.Namespace) -> int:
    from folkrnn.pipeline.serve.server import is_loopback, make_server, server_url
    from folkrnn.schemas.errors import UsageError

    checkpoint = check(args)
    app = build_app(args.datasets, checkpoint, args.threads)
    try:
        try:
            server = make_server(app, args.host, args.port)
        except OSError as err:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err} (choose another "
                             "--port, or 0 for any free one)") from None
        served = ", ".join(f"{name} ({d.count:,} tunes)" for name, d in app.library.items()) or "no dataset"
        composing = f"; compose with {app.composer.name}" if app.composer else ""
        print(f"folkrnn serve: {served}{composing}")
        if not is_loopback(args.host):
            print(f"folkrnn serve: warning: listening on {args.host}, reachable from other computers")
        print(f"folkrnn serve: open {server_url(server)} (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("folkrnn serve: stopped")
        finally:
            server.server_close()
    finally:
        app.media.close()
    return 0
