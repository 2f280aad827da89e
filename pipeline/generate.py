"""``folkrnn generate``: tens of thousands of tunes, reproducible by number, locally or on any Beam runner."""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.errors import UsageError
from pipeline.options import has_flag
from schemas.vocab import METERS, MODES, TOKEN_TO_ID

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
    parser.add_argument("--batch-size", type=int, default=1024, help="tunes sampled at once (default 1024)")
    parser.add_argument("--shard-size", type=int, default=1000, help="tunes per Parquet shard (default 1000)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass (0: off)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="arithmetic (default fp32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--numbers", help="only these tunes, printed as ABC: e.g. 488 or 1-3,488")
    parser.add_argument("--overwrite", action="store_true", help="replace a run folder made with other settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.epilog = ("Without --runner the run is local (continuous batching in this process). With --runner "
                     "(e.g. DataflowRunner, and any Beam flag) tune-number ranges become Beam elements.")


def parse_numbers(text: str) -> list[int]:
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                numbers.extend(range(first, last + 1))
            else:
                numbers.append(int(part))
        except ValueError:
            raise UsageError(f"--numbers takes numbers and ranges like 488 or 1-3,488, not {part!r}") from None
    if any(n < 1 for n in numbers):
        raise UsageError("tune numbers start at 1")
    return numbers


def build_prime(meter: str | None, mode: str | None, prime: str | None) -> list[str]:
    """The prime tokens from --meter, --mode and --prime (tokens or an ABC fragment)."""
    if meter is not None and meter not in METERS:
        raise UsageError(f"unknown meter {meter!r}; valid meters: {', '.join(METERS)}")
    if mode is not None and mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    head = [f"M:{meter}" if meter else "*", f"K:C{mode}" if mode else "*"] if (meter or mode) else []
    if not prime:
        return head
    parts = prime.split()
    if all(p == "*" or p in TOKEN_TO_ID for p in parts):
        tokens = parts
    else:
        tokens = _tokenize_fragment(prime, meter, mode)
    if tokens[:1] and tokens[0].startswith("M:"):
        return tokens
    return (head or ["*", "*"]) + tokens


def _tokenize_fragment(fragment: str, meter: str | None, mode: str | None) -> list[str]:
    from transforms.abc.errors import TuneRejected
    from transforms.abc.tokenize import tokenize_tune

    has_header = any(line.strip().startswith("K:") for line in fragment.splitlines())
    text = fragment if has_header else f"X:1\nM:{meter or '4/4'}\nL:1/8\nK:C{mode or 'maj'}\n{fragment}\n"
    try:
        tokens = tokenize_tune(text).tokens
    except TuneRejected as err:
        raise UsageError(f"cannot read --prime as tokens or ABC: {err.detail}. Tokens must be from the v2 "
                         f"vocabulary (e.g. 'M:6/8 K:Cmaj |: G'), or give ABC like '|:GABc dedB|'") from None
    return tokens if has_header else tokens[2:]


def check(args: argparse.Namespace) -> None:
    if not os.path.exists(args.checkpoint) and "://" not in args.checkpoint:
        raise UsageError(f"no checkpoint at {args.checkpoint} (train one with `folkrnn train`, or use "
                         "model/demo.pt)")
    if not 0.01 <= args.temperature <= 10:
        raise UsageError(f"--temperature must be between 0.01 and 10, got {args.temperature}")
    for name in ("num_tunes", "batch_size", "shard_size", "max_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.top_p < 1 or args.top_k < 0:
        raise UsageError("--top-k must be >= 0 and --top-p in [0, 1)")
    if args.dtype == "bf16":
        import torch

        if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
            if not cpu_has_bf16():
                raise UsageError("this CPU has no bf16 instructions (avx512_bf16/amx_bf16); use --dtype fp32")


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run(args: argparse.Namespace) -> int:
    check(args)
    prime = build_prime(args.meter, args.mode, args.prime)
    from model.checkpoint import checkpoint_id
    from model.generate import RunSettings

    checkpoint_hash = checkpoint_id(args.checkpoint) if "://" not in args.checkpoint else args.checkpoint
    settings = RunSettings(checkpoint_id=checkpoint_hash, num_tunes=args.num_tunes, seed=args.seed,
                           temperature=args.temperature, prime=tuple(prime), max_tokens=args.max_tokens,
                           top_k=args.top_k, top_p=args.top_p, dtype=args.dtype, shard_size=args.shard_size)
    if args.numbers:
        return print_numbers(args, settings)
    return generate_run(args, settings)


def print_numbers(args: argparse.Namespace, settings) -> int:
    from model.generate import load_sampler, tune_row
    from model.sample import sample_in_order

    sampler = load_sampler(args.checkpoint, args.dtype, args.device)
    numbers = parse_numbers(args.numbers)
    tunes = sample_in_order(sampler, numbers, batch_size=min(args.batch_size, len(numbers)),
                            **settings.sample_kwargs())
    for tune in tunes:
        row = tune_row(tune, settings)
        sys.stdout.write(row["abc"] + ("% truncated at --max-tokens\n" if row["truncated"] else "") + "\n")
    return 0


def generate_run(args: argparse.Namespace, settings) -> int:
    from apache_beam.io.filesystems import FileSystems

    from model.generate import SHARDS_DIR, Manifest, shard_done, shard_path
    from transforms.ingest import write_json_atomic

    out = args.out
    manifest_path = FileSystems.join(out, "manifest.json")
    manifest = Manifest(settings, args.checkpoint)
    now = json.loads(manifest.to_json())
    shards_dir = FileSystems.join(out, SHARDS_DIR)
    if FileSystems.exists(manifest_path) and not args.overwrite:
        with FileSystems.open(manifest_path) as handle:
            earlier = json.loads(handle.read().decode("utf-8"))["settings"]
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
    write_json_atomic(manifest_path, now)

    todo = [s for s in settings.shards() if not shard_done(shard_path(out, s[0]))]
    done_tunes = settings.num_tunes - sum(last - first + 1 for _, first, last in todo)
    if not todo:
        print(f"generate: all {settings.num_tunes} tunes already in {shards_dir} (nothing to do)")
        return 0
    if has_flag(args.beam_args, "--runner"):
        run_on_beam(args, settings, todo)
    else:
        run_locally(args, settings, todo, done_tunes)
    print(f"generate: {settings.num_tunes} tunes in {shards_dir} ({len(settings.shards())} shards), "
          f"manifest {manifest_path}")
    return 0


def run_locally(args: argparse.Namespace, settings, todo: list, done_tunes: int) -> None:
    from tqdm import tqdm

    from model.generate import generate_shards, load_sampler

    sampler = load_sampler(args.checkpoint, args.dtype, args.device)
    with tqdm(total=settings.num_tunes, initial=done_tunes, unit=" tunes", desc="generate",
              disable=args.quiet, smoothing=0.05) as progress:
        for _ in generate_shards(sampler, settings, args.out, todo, args.batch_size, progress):
            pass


def run_on_beam(args: argparse.Namespace, settings, todo: list) -> None:
    import apache_beam as beam

    from pipeline.options import pipeline_options
    from transforms.generate import GenerateTunes

    with beam.Pipeline(options=pipeline_options(args.beam_args)) as pipeline:
        (
            pipeline
            | "ShardRanges" >> beam.Create(todo)
            | "Generate" >> GenerateTunes(args.checkpoint, settings, args.out, args.batch_size, args.device)
        )
