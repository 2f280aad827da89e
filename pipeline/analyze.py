"""``folkrnn analyze CHECKPOINT``: what a model's parameters mean, in measurements and plots.

Parts (``--only`` picks some): parameters, tokens, activations, counting, nudging, copying.
Writes PNGs, numbers.parquet, report.md and report.html into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys

from folkrnn.schemas.errors import UsageError

HELP = "Analyse a checkpoint: parameters, token relationships, activations, counting, nudging, copying"
PARTS = ("parameters", "tokens", "activations", "counting", "nudging", "copying")  # folkrnn.model.analysis.common.PARTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint from `folkrnn train` or `folkrnn import-folkrnn`")
    parser.add_argument("--out", default="out/analysis", help="report folder (default: out/analysis)")
    parser.add_argument("--only", help=f"comma-separated parts (default: all): {','.join(PARTS)}")
    parser.add_argument("--num-tunes", type=int, default=500,
                        help="tunes generated per setting: baseline, each ablation k, each nudge (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every setting (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--max-tokens", type=int, default=1000, help="cut generated tunes here (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="tunes sampled at once (default 32)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="sampling arithmetic (default fp32; bf16 is about 2x faster on CPUs with AMX)")
    parser.add_argument("--tune", help="the tune for the activations part: tokens ('M:6/8 K:Cmaj |: G ...') or an "
                                       "ABC file (its first tune); default: the first valid generated tune")
    parser.add_argument("--counting-tunes", type=int, default=100,
                        help="tunes the model reads for the bar-position and Fourier analyses (default 100)")
    parser.add_argument("--ablation-ks", default="0,8,32,128",
                        help="numbers of last-layer units to silence (default 0,8,32,128)")
    parser.add_argument("--nudge", default="C,2,K:Cmin",
                        help="nudge targets: tokens or token classes such as bar, duration (default C,2,K:Cmin)")
    parser.add_argument("--nudge-deltas", default="-4,-2,0,2,4", help="output-bias nudges; write --nudge-deltas=-4,-2,0,2,4 (the default)")
    parser.add_argument("--ingest", default="out/ingest", help="ingest folder for copying (default out/ingest)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's choice, all cores). Use 1 when other jobs share the "
                             "CPU: oversubscribed threads sampled 30x slower in a measurement")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def parse_parts(text: str | None) -> tuple[str, ...]:
    if not text:
        return PARTS
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise UsageError(f"--only takes parts from {','.join(PARTS)}, not {','.join(unknown) or text!r}")
    return parts


def parse_numbers(text: str, flag: str, kind=float) -> tuple:
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, not {text!r}") from None
    if not values:
        raise UsageError(f"{flag} needs at least one number")
    return values


def read_tune(text: str) -> list[str]:
    """--tune: a file of ABC (its first tune) or of tokens, or a token string."""
    from folkrnn.schemas.vocab import TOKEN_TO_ID

    if os.path.isfile(text):
        with open(text, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    words = [w for w in text.split() if w not in ("<s>", "</s>")]
    if words and all(w in TOKEN_TO_ID for w in words):
        return words
    from folkrnn.transforms.abc.errors import TuneRejected
    from folkrnn.transforms.abc.split import split_abc
    from folkrnn.transforms.abc.tokenize import tokenize_tune

    tunes = split_abc(text)
    if not tunes:
        raise UsageError("--tune is neither v2 tokens nor ABC with a K: field")
    try:
        return tokenize_tune(tunes[0]).tokens
    except TuneRejected as err:
        raise UsageError(f"cannot read --tune: {err.detail}") from None
    except KeyError as err:
        raise UsageError(f"cannot read --tune as ABC: no {err.args[0]}: field") from None


def run(args: argparse.Namespace) -> int:
    parts = parse_parts(args.only)
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"no checkpoint at {args.checkpoint} (train one with `folkrnn train`, or import the "
                         "original weights with `folkrnn import-folkrnn`)")
    for name in ("num_tunes", "batch_size", "max_tokens", "counting_tunes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.01 <= args.temperature <= 10:
        raise UsageError(f"--temperature must be between 0.01 and 10, got {args.temperature}")
    ks = parse_numbers(args.ablation_ks, "--ablation-ks", int)
    if any(k < 0 for k in ks):
        raise UsageError("--ablation-ks must be >= 0")
    deltas = parse_numbers(args.nudge_deltas, "--nudge-deltas")
    targets = tuple(t for t in args.nudge.split(",") if t)
    tune = read_tune(args.tune) if args.tune else None
    if args.dtype == "bf16":
        from folkrnn.model.devices import cpu_has_bf16

        if not cpu_has_bf16():  # the analysis samples on the CPU
            raise UsageError("this CPU has no bf16 instructions (avx512_bf16/amx_bf16); use --dtype fp32")
    if "copying" in parts and args.only and not os.path.isdir(os.path.join(args.ingest, "tunes")):
        raise UsageError(f"copying needs an ingest dataset: no {args.ingest}/tunes (run `folkrnn ingest`, or pass "
                         "--ingest DIR)")

    import torch

    from folkrnn.model.analysis.common import AnalysisSettings
    from folkrnn.model.analysis.nudging import resolve_target
    from folkrnn.model.analysis.report import run_analysis
    from folkrnn.model.checkpoint import checkpoint_id, load_checkpoint

    if "nudging" in parts:
        for target in targets:
            resolve_target(target)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.checkpoint)
    settings = AnalysisSettings(
        num_tunes=args.num_tunes, seed=args.seed, temperature=args.temperature, max_tokens=args.max_tokens,
        batch_size=args.batch_size, dtype=args.dtype, tune=tune, counting_tunes=args.counting_tunes, ablation_ks=ks,
        nudge_targets=targets, nudge_deltas=deltas, ingest=args.ingest)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"folkrnn analyze: {message}", file=sys.stderr, flush=True)

    source = f"{args.checkpoint} (sha256 {checkpoint_id(args.checkpoint)})"
    result = run_analysis(model, args.out, parts, settings, source=source, log=log)
    print(f"wrote {os.path.join(args.out, 'report.md')} ({len(result['sections'])} parts, "
          f"{sum(result['seconds'].values()):.0f} s)")
    return 0
