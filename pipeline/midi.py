"""A volume's MIDI files: abc2midi makes one per tune, into a folder swapped in whole."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

from folkrnn.pipeline.subprocesses import run_tool
from folkrnn.transforms.abc.tool_output import abc2midi_messages
from folkrnn.transforms.abc.volume import tune_start_lines

ABC2MIDI_TIMEOUT = 300  # seconds
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


def make_midi(abc_text: str, midi_dir: str) -> tuple[int, list[dict]]:
    """One MIDI file per tune with abc2midi: ``midi_dir/tune-<number>.mid``; returns (files, messages).

    abc2midi names each output after its input file and the X: number, so it reads a copy called
    ``tune-.abc``. The folder is replaced as a whole, never left half-written.
    """
    parent = os.path.dirname(os.path.abspath(midi_dir))
    os.makedirs(parent, exist_ok=True)
    starts = tune_start_lines(abc_text)
    work = tempfile.mkdtemp(prefix=MIDI_PREFIX, dir=parent)
    try:
        with open(os.path.join(work, "tune-.abc"), "w", encoding="utf-8") as handle:
            handle.write(abc_text)
        proc = run_tool(["abc2midi", "tune-.abc"], ABC2MIDI_TIMEOUT, cwd=work)
        os.remove(os.path.join(work, "tune-.abc"))
        messages = abc2midi_messages(proc.stdout + "\n" + proc.stderr, starts)
        count = len(os.listdir(work))
        replace_folder(work, midi_dir)
    finally:
        if os.path.exists(work):
            shutil.rmtree(work)
    return count, messages
