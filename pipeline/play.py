"""``folkrnn play``: tunes as audio files a user can listen to, made offline with abc2midi and fluidsynth.

A tune is played as its book prints it (``books.with_titles_and_abc``), with the tempo and
instrument the book's MIDI files get (``transforms.abc.playback``): the tune's ``Q:`` tempo, else
a moderate one for its meter, and the melody on General MIDI program 110, "Fiddle" (``--program
73`` for a flute). abc2midi makes the MIDI file; fluidsynth plays it with the General MIDI
soundfont of Debian's fluid-soundfont-gm into Ogg Vorbis, WAV or FLAC, by the suffix of ``--out``
(``.mid`` keeps the MIDI file itself).

File names: ``--out`` is the file of one tune (default ``tune-<number>.ogg``). With several
numbers, ``{number}`` in ``--out`` stands for each tune's number; an ``--out`` without it gets
``-<number>`` before its suffix (``--out jig.ogg`` -> ``jig-488.ogg``, ``jig-489.ogg``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from folkrnn.schemas.errors import UsageError

HELP = "Play tunes: render them as audio files (Ogg, WAV, FLAC) or MIDI with abc2midi and fluidsynth, offline"
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian's fluid-soundfont-gm
# --out suffix -> fluidsynth's audio file type (-T); None: the MIDI file itself, no fluidsynth
FILE_TYPES = {".ogg": "oga", ".oga": "oga", ".wav": "wav", ".flac": "flac", ".mid": None}
SAMPLE_RATE = 44100
# fluidsynth's master gain (its default, 0.2, is set for many instruments at once): one melody
# line peaks around a third of full scale.
GAIN = 1.0
FLUIDSYNTH_TIMEOUT = 60  # seconds, one tune (it renders about 50 times faster than real time)
DEFAULT_OUT = "tune-{number}.ogg"


def tune_numbers(text: str) -> list[int]:
    """``488`` or ``488,489``: argparse type of --numbers (each value may hold several)."""
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        numbers = []
    if not numbers:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tune number (give numbers such as 488 or 488,489)")
    return numbers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from folkrnn.transforms.abc.playback import MELODY_PROGRAM

    parser.add_argument("dataset", metavar="DATASET",
                        help="tunes: a folder of Parquet shards (folkrnn generate or validate) or a compile corpus")
    parser.add_argument("--numbers", type=tune_numbers, nargs="+", required=True, metavar="N",
                        help="the tunes to play, by number (X:), e.g. --numbers 488 or --numbers 488 489,490")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output file, its suffix the format: .ogg, .wav, .flac or .mid (default {DEFAULT_OUT}); "
                             "{number} stands for the tune number, added before the suffix for several tunes")
    parser.add_argument("--program", type=int, default=MELODY_PROGRAM, metavar="P",
                        help=f"General MIDI program of the melody, 0-127 (default {MELODY_PROGRAM}, Fiddle; 73 Flute, "
                             "40 Violin, 78 Whistle)")
    parser.add_argument("--key", default="session", metavar="session|C|TONIC",
                        help="key to play in, as folkrnn compile --key (default session: the key the books print)")
    parser.add_argument("--soundfont", default=SOUNDFONT,
                        help=f"SoundFont for fluidsynth (default {SOUNDFONT}, from Debian's fluid-soundfont-gm)")
    parser.epilog = ("Tempo: the tune's Q: field, else a moderate speed for its meter. Audio is rendered offline "
                     "(fluidsynth -F); nothing is played on a sound card.")


def output_paths(pattern: str, numbers: list[int]) -> dict[int, str]:
    """Tune number -> output file, from --out (see the module docstring)."""
    if "{number}" not in pattern and len(numbers) > 1:
        stem, suffix = os.path.splitext(pattern)
        pattern = f"{stem}-{{number}}{suffix}"
    return {n: pattern.replace("{number}", str(n)) for n in numbers}


def file_type(path: str) -> str | None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_TYPES:
        raise UsageError(f"--out {path!r} must end in {', '.join(FILE_TYPES)} (the suffix chooses the format)")
    return FILE_TYPES[suffix]


def check_tools(audio: bool, soundfont: str) -> None:
    from folkrnn.pipeline.subprocesses import missing_tools, missing_tools_text

    missing = missing_tools("abc2midi", *(["fluidsynth"] if audio else []))
    if missing:
        raise UsageError(missing_tools_text(missing) + ("" if not audio else "; --out x.mid needs only abc2midi"))
    if not audio:
        return
    if not os.path.isfile(soundfont):
        raise UsageError(f"no soundfont at {soundfont}: apt-get install fluid-soundfont-gm, or give --soundfont FILE")
    with open(soundfont, "rb") as handle:
        if handle.read(4) != b"RIFF":
            raise UsageError(f"--soundfont {soundfont} is not a SoundFont (.sf2) file")


def read_tunes(dataset: str, numbers: list[int], key: str = "C") -> dict[int, str]:
    """Tune number -> its ABC as its book prints it in ``key`` (compile's --key); a number the
    dataset lacks is a UsageError."""
    import pyarrow as pa

    from folkrnn.pipeline.books import with_titles_and_abc
    from folkrnn.pipeline.datasets import connect, relation, select
    from folkrnn.schemas.tables import findings_table
    from folkrnn.transforms.validator import validate_tokens

    available = list(relation(connect(), dataset).columns)
    if "number" not in available or "tokens" not in available:
        raise UsageError(f"{dataset} has no number and tokens columns: give tunes written by folkrnn generate, "
                         "validate or compile (its corpus)")
    columns = [c for c in ("number", "title", "meter", "tokens") if c in available]
    table = select(dataset, where=f"number IN ({', '.join(str(n) for n in numbers)})", columns=columns)
    found = set(table.column("number").to_pylist())
    unknown = [n for n in numbers if n not in found]
    if unknown:
        span = select(dataset, columns=["number"]).column("number").to_pylist()
        raise UsageError(f"no tune numbered {', '.join(map(str, unknown))} in {dataset}"
                         + (f" (its numbers run {min(span)}-{max(span)})" if span else " (it holds no tunes)"))
    for name, kind in (("title", pa.string()), ("meter", pa.string()), ("abc", pa.string())):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, kind))
    # the validator's findings, as the book marks the tune (a text line abc2midi does not play)
    findings = findings_table([validate_tokens(list(t or [])) for t in table.column("tokens").to_pylist()])
    for name in ("valid", "reasons", "problems", "pickup"):
        table = table.append_column(findings.schema.field(name), findings.column(name))
    table = with_titles_and_abc(table, key)
    return dict(zip(table.column("number").to_pylist(), table.column("abc").to_pylist()))


def render(block: str, number: int, out: str, kind: str | None, program: int, soundfont: str) -> None:
    """One tune to ``out``: MIDI with abc2midi, then audio with fluidsynth (``kind``: its -T type)."""
    from folkrnn.pipeline.midi import tune_midi
    from folkrnn.pipeline.subprocesses import run_tool
    from folkrnn.schemas.files import atomic_write
    from folkrnn.transforms.abc.playback import playable_tune

    with tempfile.TemporaryDirectory(prefix="folkrnn-play-") as work:
        midi = os.path.join(work, f"tune-{number}.mid")
        made = tune_midi(playable_tune(block, program), number, midi, work)
        if made.failure:
            raise RuntimeError(f"tune {number}: {made.failure}")
        result = midi
        if kind is not None:
            result = os.path.join(work, f"tune-{number}.audio")
            proc = run_tool(["fluidsynth", "-n", "-i", "-q", "-g", str(GAIN), "-r", str(SAMPLE_RATE), "-T", kind,
                             "-F", result, soundfont, midi], FLUIDSYNTH_TIMEOUT)
            errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]
            if proc.returncode != 0 or errors or not os.path.isfile(result) or os.path.getsize(result) == 0:
                detail = errors[0] if errors else f"exit status {proc.returncode}, no audio written"
                raise RuntimeError(f"tune {number}: fluidsynth failed: {detail}")
        if os.path.dirname(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(result, "rb") as source:
            atomic_write(out, lambda handle: shutil.copyfileobj(source, handle))


def run(args: argparse.Namespace) -> int:
    numbers = list(dict.fromkeys(n for group in args.numbers for n in group))
    if not 0 <= args.program <= 127:
        raise UsageError(f"--program must be a General MIDI program from 0 to 127, got {args.program}")
    paths = output_paths(args.out, numbers)
    kinds = {n: file_type(path) for n, path in paths.items()}
    check_tools(any(kind is not None for kind in kinds.values()), args.soundfont)
    from folkrnn.transforms.abc.keys import check_key_choice

    tunes = read_tunes(args.dataset, numbers, check_key_choice(args.key))
    failed = 0
    for n in numbers:
        try:
            render(tunes[n], n, paths[n], kinds[n], args.program, args.soundfont)
        except RuntimeError as err:  # one tune the tools cannot play: say so, play the others
            print(f"folkrnn play: error: {err}", file=sys.stderr)
            failed += 1
            continue
        title = next((line[2:] for line in tunes[n].splitlines() if line.startswith("T:")), "")
        print(f"tune {n} ({title}) -> {paths[n]}")
    return 1 if failed else 0
