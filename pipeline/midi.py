"""MIDI files with abc2midi: one per tune, each tune rendered on its own, into a folder swapped in whole.

Each tune gets its own abc2midi run (``transforms.abc.playback`` says why: on a whole volume,
abc2midi 4.84 lets one broken tune crash or change the tunes after it, at random). A run that
crashes is retried; a tune that still has no file after ``ATTEMPTS`` runs is recorded (its number
and why), never dropped silently. The text abc2midi reads is the printed tune plus its tempo and
instrument (``playable_tune``); its messages are mapped back to the lines of the volume's ABC.
Every file ends by releasing all notes (``end_all_notes``): abc2midi leaves some sounding after
an unclosed chord.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from dataclasses import dataclass, field

from folkrnn.pipeline.subprocesses import require_tools, run_tool
from folkrnn.transforms.abc.playback import (
    MELODY_PROGRAM,
    Playable,
    end_all_notes,
    playable_tune,
    tune_blocks,
)
from folkrnn.transforms.abc.tool_output import abc2midi_messages

ABC2MIDI_TIMEOUT = 60  # seconds, one tune
ATTEMPTS = 3  # abc2midi runs of a tune before it is recorded as having no MIDI file
MIDI_PREFIX = ".midi-"  # work folders and replaced folders beside the MIDI folders start so


def replace_folder(new: str, target: str) -> None:
    """Put the folder ``new`` at ``target`` (same parent), in place of any folder there.

    A folder of many files cannot be written atomically the way ``atomic_write`` writes one file,
    so it is filled under a dot-prefixed name and renamed. A rename cannot replace a folder that
    has files, so the old one first moves aside, under a dot-prefixed name a killed run leaves
    to ``books.remove_leftovers``, and is deleted after the new one is in place.
    """
    aside = None
    if os.path.exists(target):
        aside = os.path.join(os.path.dirname(target), f"{MIDI_PREFIX}replaced-{uuid.uuid4().hex[:12]}")
        os.replace(target, aside)
    os.replace(new, target)
    if aside is not None:
        shutil.rmtree(aside)


@dataclass
class TuneMidi:
    """What abc2midi made of one tune: its messages (lines of the tune's text) and, when it made
    no file, why."""

    messages: list[dict] = field(default_factory=list)
    failure: str | None = None


def exit_text(returncode: int) -> str:
    """``exit status 1``, ``killed by SIGABRT``."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def tune_midi(playable: Playable, number: int, midi_path: str, work: str) -> TuneMidi:
    """Write one tune's MIDI file with abc2midi, retrying a run that fails; ``work`` is a scratch folder.

    A run counts when abc2midi exits 0 and leaves a file (it exits 0 after errors it recovers
    from; a crash or a fatal error leaves no file, or a partial one, which is removed).
    """
    source = os.path.join(work, "tune.abc")
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(playable.text)
    reasons = []
    for _ in range(ATTEMPTS):
        proc = run_tool(["abc2midi", source, "-o", midi_path], ABC2MIDI_TIMEOUT, cwd=work)
        messages = abc2midi_messages(proc.stdout + "\n" + proc.stderr, ([1], [number]))
        if proc.returncode == 0 and os.path.isfile(midi_path) and os.path.getsize(midi_path) > 0:
            with open(midi_path, "rb") as handle:
                midi = handle.read()
            with open(midi_path, "wb") as handle:  # in a work folder: the finished folder is swapped in whole
                handle.write(end_all_notes(midi))
            return TuneMidi(messages)
        reasons.append(exit_text(proc.returncode))
        if os.path.exists(midi_path):
            os.remove(midi_path)
    return TuneMidi(messages, f"abc2midi failed {ATTEMPTS} times ({', '.join(reasons)}): no MIDI file")


@dataclass
class MidiFiles:
    """A volume's MIDI folder: how many files, abc2midi's messages (lines of the volume's ABC),
    and the tunes without a file (number and why)."""

    count: int
    messages: list[dict]
    missing: list[dict]


def make_midi(abc_text: str, midi_dir: str, program: int = MELODY_PROGRAM) -> MidiFiles:
    """One MIDI file per tune of a volume's ABC: ``midi_dir/tune-<number>.mid``.

    The folder is replaced as a whole, never left half-written.
    """
    require_tools("abc2midi")
    parent = os.path.dirname(os.path.abspath(midi_dir))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=MIDI_PREFIX, dir=parent)
    scratch = tempfile.mkdtemp(prefix=MIDI_PREFIX, dir=parent)
    messages: list[dict] = []
    missing: list[dict] = []
    try:
        for number, start, block in tune_blocks(abc_text):
            playable = playable_tune(block, program)
            made = tune_midi(playable, number, os.path.join(work, f"tune-{number}.mid"), scratch)
            for message in made.messages:  # a line of the tune's text -> the line of the volume
                message["line"] = start - 1 + playable.block_line(message["line"])
            messages += made.messages
            if made.failure:
                messages.append({"number": number, "level": "error", "line": None, "column": None,
                                 "message": made.failure})
                missing.append({"number": number, "reason": made.failure})
        count = len(os.listdir(work))
        replace_folder(work, midi_dir)
    finally:
        for folder in (work, scratch):
            if os.path.exists(folder):
                shutil.rmtree(folder)
    return MidiFiles(count, messages, missing)
