"""``folkrnn generate``: tens of thousands of tunes, reproducible by number, locally or on any Beam runner."""

from __future__ import annotations

import argparse
import json
import os
import sys
from fractions import Fraction

from folkrnn.pipeline.beam.options import has_flag
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.vocab import METERS, MODES, TOKEN_TO_ID

BAR_TOKENS = frozenset({"|", "|:", ":|", "|1", "|2"})

HELP = "Sample tunes from a checkpoint into a Parquet dataset (resumable; --runner for Beam/Dataflow)"
ACCEPTS_BEAM_FLAGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint from `folkrnn train` or `folkrnn import-folkrnn`")
    parser.add_argument("--out", default="out/generated", help="run folder (default: out/generated)")
    parser.add_argument("--num-tunes", type=int, default=30000, help="tunes 1..N (default 30000)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, 0.01-10 (default 1)")
    parser.add_argument("--meter", help=f"prime the meter: one of {', '.join(METERS)}")
    parser.add_argument("--mode", help=f"prime the mode: one of {', '.join(MODES)}")
    parser.add_argument("--prime", help="tokens to start every tune with ('*' = the model chooses), "
                                        "or an ABC fragment such as '|:GABc dedB|'")
    parser.add_argument("--max-tokens", type=int, default=1000, help="stop a tune here, flagged truncated")
    parser.add_argument("--well-formed", action="store_true",
                        help="every tune valid by construction: each draw keeps to the tokens that leave the tune "
                             "well-formed (bar lengths, pickups, tuplets, chords, repeats, endings), renormalised; "
                             "tunes end with </s> before --max-tokens")
    parser.add_argument("--form", default="",
                        help="with --well-formed (implied): the parts to write, e.g. AABB, AAB, ABB, AABBCC; "
                             "repeated parts get |: :|, no endings")
    parser.add_argument("--bars-per-part", default="8",
                        help="with --form: bars of each part, one number or one per part (e.g. 8 or 8,16); "
                             "a pickup and a part's lead-in do not count (default 8)")
    parser.add_argument("--batch-size", type=int, default=1024, help="tunes sampled at once (default 1024)")
    parser.add_argument("--shard-size", type=int, default=1000, help="tunes per Parquet shard (default 1000)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass (0: off)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="arithmetic (default fp32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--workers", type=int, default=None,
                        help="local runs: sampling processes, each with its own batch (default: one per usable "
                             "core, at most one per 256 tunes; 1 on a GPU); the tunes are the same for any number")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per worker (default 0: 1 with several workers or on Beam, else "
                             "torch's choice); torch's threads stall when another process takes a core")
    parser.add_argument("--numbers", help="only these tunes, printed as ABC: e.g. 488 or 1-3,488")
    parser.add_argument("--overwrite", action="store_true", help="replace a run folder made with other settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.epilog = ("Without --runner the run is local: --workers processes, each sampling one continuously "
                     "refilled batch. With --runner (e.g. DataflowRunner, and any Beam flag) tune-number ranges "
                     "become Beam elements.")


MAX_NUMBERS = 100_000  # --numbers prints ABC to the terminal; a whole run belongs in a run folder


def parse_numbers(text: str) -> list[int]:
    """``488`` or ``1-3,488`` -> [1, 2, 3, 488]; ranges checked before anything is allocated."""
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
            else:
                first = last = int(part)
        except ValueError:
            raise UsageError(f"--numbers takes numbers and ranges like 488 or 1-3,488, not {part!r}") from None
        if first < 1:
            raise UsageError(f"tune numbers start at 1 (--numbers {part})")
        if last < first:
            raise UsageError(f"--numbers range {part} runs backwards; write {last}-{first}")
        spans.append((first, last))
    count = sum(last - first + 1 for first, last in spans)
    if count > MAX_NUMBERS:
        raise UsageError(f"--numbers asks for {count:,} tunes; at most {MAX_NUMBERS:,} are printed at once "
                         "(for a whole run use --num-tunes and --out)")
    return [n for first, last in spans for n in range(first, last + 1)]


def build_prime(meter: str | None, mode: str | None, prime: str | None) -> list[str]:
    """The prime tokens from --meter, --mode and --prime (tokens or an ABC fragment).

    A prime is checked against its meter: every bar closed on both sides must be a full bar of
    it. Without --meter (and without an M: token) the meter the bars imply is primed, so the
    model cannot pick one the bars do not fit; when several fit, the user is asked to choose.
    """
    if meter is not None and meter not in METERS:
        raise UsageError(f"unknown meter {meter!r}; valid meters: {', '.join(METERS)}")
    if mode is not None and mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if not prime:
        return [f"M:{meter}" if meter else "*", f"K:C{mode}" if mode else "*"] if (meter or mode) else []
    parts = prime.split()
    if all(p == "*" or p in TOKEN_TO_ID for p in parts):
        tokens = parts
    else:
        tokens = _tokenize_fragment(prime, meter, mode)
    if tokens[:1] and tokens[0].startswith("M:"):
        check_prime_bars(tokens[2:], tokens[0][2:])
        return tokens
    fitting = check_prime_bars(tokens, meter)
    if meter is None and fitting is not None:
        meter = fitting
        note(f"--prime: its bars fit M:{meter} only, so every tune is primed in M:{meter} (--meter to choose)")
    head = [f"M:{meter}" if meter else "*", f"K:C{mode}" if mode else "*"]
    return head + tokens


def note(message: str) -> None:
    print(f"folkrnn generate: {message}", file=sys.stderr)


def closed_bars(body: list[str]) -> list[list[str]]:
    """The bars of a prime's body that have a bar line on both sides (a pickup or an open last bar
    says nothing about the meter)."""
    bars, current, opened = [], [], False
    for token in body:
        if token in BAR_TOKENS:
            if opened and current:
                bars.append(current)
            current, opened = [], True
        else:
            current.append(token)
    return bars


def check_prime_bars(body: list[str], meter: str | None) -> str | None:
    """Refuse a prime whose full bars do not fit ``meter``; without a meter, the one meter they fit.

    Returns the implied meter (None when a meter was given, or the prime has no closed bar).
    """
    from folkrnn.transforms.validator import bar_lengths

    bars = closed_bars([t for t in body if t != "*"])
    if not bars:
        return None

    def fits(candidate: str) -> int | None:
        """The number (1-based) of the first bar that is not a full bar of ``candidate``, or None."""
        full = Fraction(candidate) * 8
        for number, bar in enumerate(bars, 1):
            if sum(bar_lengths([f"M:{candidate}", "K:Cmaj", "|", *bar, "|"])) != full:
                return number
        return None

    def eighths(candidate: str, bar: list[str]) -> str:
        length = sum(bar_lengths([f"M:{candidate}", "K:Cmaj", "|", *bar, "|"]))
        return f"{length} eighth{'s' if length != 1 else ''}"

    if meter is not None:
        wrong = fits(meter)
        if wrong is not None:
            bar = bars[wrong - 1]
            raise UsageError(f"--prime bar {wrong} ({' '.join(bar)}) is {eighths(meter, bar)} long, but a bar of "
                             f"M:{meter} is {Fraction(meter) * 8} eighths: fix the prime or choose another --meter")
        return None
    fitting = [m for m in METERS if fits(m) is None]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        lengths = ", ".join(eighths("4/4", bar) for bar in bars)
        raise UsageError(f"--prime bars of {lengths} fit no meter of the vocabulary ({', '.join(METERS)}): "
                         "make every bar between two bar lines a full bar")
    raise UsageError(f"--prime bars fit {' and '.join('M:' + m for m in fitting)}: say which with --meter")


def _tokenize_fragment(fragment: str, meter: str | None, mode: str | None) -> list[str]:
    from folkrnn.transforms.abc.errors import TuneRejected
    from folkrnn.transforms.abc.tokenize import tokenize_tune

    has_header = any(line.strip().startswith("K:") for line in fragment.splitlines())
    text = fragment if has_header else f"X:1\nM:{meter or '4/4'}\nL:1/8\nK:C{mode or 'maj'}\n{fragment}\n"
    try:
        tokenized = tokenize_tune(text)
    except TuneRejected as err:
        raise UsageError(f"cannot read --prime as tokens or ABC: {err.detail}. Tokens must be from the v2 "
                         f"vocabulary (e.g. 'M:6/8 K:Cmaj |: G'), or give ABC like '|:GABc dedB|'") from None
    tokens = tokenized.tokens if has_header else tokenized.tokens[2:]
    if tokenized.removed:
        dropped = ", ".join(f"{what.replace('_', ' ')} {count}" for what, count in sorted(tokenized.removed.items()))
        note(f"warning: --prime: dropped what the vocabulary cannot say ({dropped}); the prime is: "
             f"{' '.join(tokens)}")
    return tokens


def check(args: argparse.Namespace) -> None:
    if not os.path.exists(args.checkpoint) and "://" not in args.checkpoint:
        raise UsageError(f"no checkpoint at {args.checkpoint} (train one with `folkrnn train`, or use "
                         "model/demo.pt)")
    if not 0.01 <= args.temperature <= 10:
        raise UsageError(f"--temperature must be between 0.01 and 10, got {args.temperature}")
    if args.threads < 0:
        raise UsageError(f"--threads must be 0 (torch's choice) or more, got {args.threads}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None and has_flag(args.beam_args, "--runner"):
        raise UsageError("--workers is for local runs; on Beam the runner's own flags choose the workers "
                         "(e.g. --num_workers on Dataflow, --direct_num_workers on the DirectRunner)")
    for name in ("num_tunes", "batch_size", "shard_size", "max_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.top_p < 1 or args.top_k < 0:
        raise UsageError("--top-k must be >= 0 and --top-p in [0, 1)")
    if args.form or args.well_formed:
        args.well_formed = True
        check_structure(args)
    elif args.bars_per_part != "8":
        raise UsageError("--bars-per-part needs --form (e.g. --form AABB --bars-per-part 8)")
    if args.dtype == "bf16":
        from folkrnn.model.devices import cpu_has_bf16, resolve_device

        # Only a run sure to sample on this CPU is refused: a Beam worker given --device cuda may have a GPU.
        if args.device in ("cpu", "auto") and resolve_device(args.device).type == "cpu" and not cpu_has_bf16():
            raise UsageError("this CPU has no bf16 instructions (avx512_bf16/amx_bf16); use --dtype fp32")


def check_structure(args: argparse.Namespace) -> None:
    """The --form and --bars-per-part given, parsed (a one-line error says what the tokens cannot write)."""
    from folkrnn.model.grammar import Form

    try:
        counts = [int(n) for n in args.bars_per_part.split(",")]
    except ValueError:
        raise UsageError(f"--bars-per-part takes numbers like 8 or 8,16, not {args.bars_per_part!r}") from None
    args.bars = tuple(counts)
    if args.form:
        try:
            Form.parse(args.form, counts[0] if len(counts) == 1 else counts)
        except ValueError as err:
            raise UsageError(f"--form: {err}") from None
        args.form = args.form.strip().upper()
        if len(counts) == 1:
            args.bars = tuple(counts * len(Form.parse(args.form, counts[0]).bars))


def check_prime_for_grammar(args: argparse.Namespace, prime: list[str]) -> None:
    """With --well-formed, the prime must keep to the grammar and leave room before --max-tokens."""
    from folkrnn.model.grammar import Form, Grammar

    form = Form.parse(args.form, list(args.bars)) if args.form else None
    try:
        Grammar("cpu", form).check_prime(prime, args.max_tokens)
    except ValueError as err:
        message = str(err).replace("max_tokens", "--max-tokens")
        raise UsageError(f"--well-formed: {message}") from None


def run(args: argparse.Namespace) -> int:
    check(args)
    prime = build_prime(args.meter, args.mode, args.prime)
    if len(prime) >= args.max_tokens:  # the sampler's own limit: the model must write at least one token
        raise UsageError(f"the prime is {len(prime)} tokens and --max-tokens {args.max_tokens} leaves the model "
                         "nothing to write: shorten the prime or raise --max-tokens")
    if args.well_formed:
        check_prime_for_grammar(args, prime)
    numbers = parse_numbers(args.numbers) if args.numbers else None
    from folkrnn.model.checkpoint import checkpoint_id
    from folkrnn.model.generate import RunSettings, load_named_model

    # The whole checkpoint is checked (config, weight shapes, NaN) before a folder or a worker is made.
    model, name = load_named_model(args.checkpoint)
    checkpoint_hash = checkpoint_id(args.checkpoint) if "://" not in args.checkpoint else args.checkpoint
    settings = RunSettings(checkpoint_id=checkpoint_hash, num_tunes=args.num_tunes, seed=args.seed,
                           temperature=args.temperature, prime=tuple(prime), max_tokens=args.max_tokens,
                           top_k=args.top_k, top_p=args.top_p, dtype=args.dtype, shard_size=args.shard_size,
                           well_formed=args.well_formed, form=args.form,
                           bars_per_part=args.bars if args.form else ())
    if numbers is not None:
        return print_numbers(args, settings, numbers, model)
    return generate_run(args, settings, model, name)


def print_numbers(args: argparse.Namespace, settings, numbers: list[int], model) -> int:
    from folkrnn.model.generate import load_sampler, tune_row
    from folkrnn.model.sample import sample_in_order

    set_threads(args.threads)
    sampler = load_sampler(args.checkpoint, args.dtype, args.device, model)
    tunes = sample_in_order(sampler, numbers, batch_size=min(args.batch_size, len(numbers)),
                            **settings.sample_kwargs())
    for tune in tunes:
        row = tune_row(tune, settings)
        sys.stdout.write(row["abc"] + ("% truncated at --max-tokens\n" if row["truncated"] else "") + "\n")
    return 0


def generate_run(args: argparse.Namespace, settings, model, checkpoint_name: str = "") -> int:
    from dataclasses import asdict

    from apache_beam.io.filesystems import FileSystems

    from folkrnn.model.generate import SHARDS_DIR, Manifest, RunSettings, shard_done, shard_path
    from folkrnn.schemas.files import write_json

    out = args.out
    manifest_path = FileSystems.join(out, "manifest.json")
    manifest = Manifest(settings, args.checkpoint, checkpoint_name)
    now = json.loads(manifest.to_json())
    shards_dir = FileSystems.join(out, SHARDS_DIR)
    if FileSystems.exists(manifest_path) and not args.overwrite:
        with FileSystems.open(manifest_path) as handle:
            earlier = json.loads(handle.read().decode("utf-8"))["settings"]
        # a setting added since the run was made counts as its default there
        defaults = json.loads(json.dumps(asdict(RunSettings(checkpoint_id="", num_tunes=0))))
        earlier = {**defaults, **earlier}
        if earlier != now["settings"]:
            changed = ", ".join(k for k in now["settings"] if earlier.get(k) != now["settings"][k])
            raise UsageError(f"{out} holds a run with other settings ({changed}); use another --out, or "
                             "--overwrite to replace it")
    elif args.overwrite and FileSystems.exists(shards_dir):
        found = FileSystems.match([FileSystems.join(shards_dir, "part-*")])[0].metadata_list
        if found:
            FileSystems.delete([m.path for m in found])
    if not FileSystems.exists(shards_dir):
        FileSystems.mkdirs(shards_dir)
    write_json(manifest_path, now)

    todo = [s for s in settings.shards() if not shard_done(shard_path(out, s[0]))]
    done_tunes = settings.num_tunes - sum(last - first + 1 for _, first, last in todo)
    if not todo:
        print(f"generate: all {settings.num_tunes} tunes already in {shards_dir} (nothing to do)")
        return 0
    if has_flag(args.beam_args, "--runner"):
        run_on_beam(args, settings, todo)
    else:
        run_locally(args, settings, todo, done_tunes, model)
    print(f"generate: {settings.num_tunes} tunes in {shards_dir} ({len(settings.shards())} shards), "
          f"manifest {manifest_path}")
    return 0


def set_threads(threads: int) -> None:
    """torch's intra-op threads in this process (0: leave torch's choice, a thread per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def local_workers(args: argparse.Namespace, todo: list) -> int:
    """--workers (never more than there are chunks of tunes to hand out), or the default."""
    from folkrnn.model.devices import resolve_device
    from folkrnn.pipeline.generate_workers import chunks_of, default_workers

    if args.workers:
        return max(1, min(args.workers, len(chunks_of(todo))))
    tunes = sum(last - first + 1 for _, first, last in todo)
    return default_workers(resolve_device(args.device).type, tunes)


def run_locally(args: argparse.Namespace, settings, todo: list, done_tunes: int, model) -> None:
    """One process (--workers 1: this one, with --threads) or several, each with one thread by default."""
    from tqdm import tqdm

    from folkrnn.model.generate import generate_shards, load_sampler
    from folkrnn.pipeline.generate_workers import memory_for_batch, run_workers, worker_threads

    workers = local_workers(args, todo)
    with tqdm(total=settings.num_tunes, initial=done_tunes, unit=" tunes", desc="generate",
              disable=args.quiet, smoothing=0.05) as progress:
        if workers > 1:
            run_workers(model, settings, args.out, todo, workers=workers, batch_size=args.batch_size,
                        threads=worker_threads(args.threads, True), device=args.device,
                        progress=progress.update)
            return
        set_threads(args.threads)
        sampler = load_sampler(args.checkpoint, args.dtype, args.device, model)
        with memory_for_batch(args.batch_size, settings.max_tokens):
            for _ in generate_shards(sampler, settings, args.out, todo, args.batch_size, progress):
                pass


def run_on_beam(args: argparse.Namespace, settings, todo: list) -> None:
    import apache_beam as beam

    from folkrnn.pipeline.beam.generate import GenerateTunes
    from folkrnn.pipeline.beam.options import pipeline_options

    with beam.Pipeline(options=pipeline_options(args.beam_args)) as pipeline:
        (
            pipeline
            | "ShardRanges" >> beam.Create(todo)
            | "Generate" >> GenerateTunes(args.checkpoint, settings, args.out, args.batch_size, args.device,
                                             threads=args.threads)
        )
