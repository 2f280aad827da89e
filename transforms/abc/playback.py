"""A tune as abc2midi should play it, and the way back from a line abc2midi names to the tune's line.

The printed ABC stays as it is; only the text handed to abc2midi gets at most two more lines: a
``Q:`` tempo just before ``K:`` when the tune has none (``schemas.music.PLAYBACK_TEMPO``, by meter),
and the melody's instrument, ``%%MIDI program``, just after ``K:``.

abc2midi plays each tune on its own (``tune_blocks`` cuts a volume into its tunes): run on a whole
volume, abc2midi 4.84 carries state from one tune into the next. A chord left open (``[`` without
``]``) overruns its chord buffer, and the next tune reads garbage note lengths and aborts at
random, so no later tune gets a file; a tune cut off inside a tuplet makes the next tune's first
notes a triplet.

abc2midi also refuses a length that is not a power of two (``e/3``, a third of an eighth: "3 b is
not a power of 2", then a zero denominator and exit 1, no file). The same length is one note of a
triplet of sixteenths, ``(3:2:1e/2``, which abc2midi plays; ``playable_tune`` writes it so.

A chord left open also leaves abc2midi's MIDI file with notes that are never released, which a
sustained instrument holds for ever: fluidsynth then renders without end. ``end_all_notes``
ends every track with an All Notes Off on each channel.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from folkrnn.schemas.music import PLAYBACK_TEMPO
from folkrnn.transforms.abc.volume import tune_start_lines

# General MIDI program of the melody, counted from 0 as abc2midi's %%MIDI program counts:
# 110 is "Fiddle" (40 "Violin", 73 "Flute", 78 "Whistle").
MELODY_PROGRAM = 110


# a note, rest or chord of length /3 (not /32 ...): abc2midi cannot read it, a 3:2 tuplet of one note can
THIRD = re.compile(r"(?P<element>[\^=_]*[A-Ga-gz][,']*|\[[^\[\]]*\])/3(?![0-9])")


def thirds_as_tuplets(line: str) -> str:
    """``e/3`` (a third of the unit) as abc2midi can play it: ``(3:2:1e/2``."""
    return THIRD.sub(r"(3:2:1\g<element>/2", line)


@dataclass(frozen=True)
class Playable:
    """The text abc2midi reads for one tune, and which of its lines the tune's block lacks."""

    text: str
    inserted: tuple[int, ...]  # 1-based lines of ``text`` added to the tune's block, ascending

    def block_line(self, line: int) -> int:
        """The line of the tune's block that ``line`` of ``text`` is (an inserted line: the one before it)."""
        return line - sum(1 for added in self.inserted if added <= line)


def header_field(lines: list[str], field: str) -> str | None:
    """The value of a header field (``M``, ``Q`` ...) of a tune's lines, up to its ``K:`` line."""
    for line in lines:
        if line.startswith(field + ":"):
            return line[len(field) + 1:].strip()
        if line.startswith("K:"):
            return None
    return None


def playable_tune(block: str, program: int = MELODY_PROGRAM) -> Playable:
    """One tune's ABC (``X:`` to its last line) with its tempo and instrument for abc2midi."""
    lines = block.rstrip("\n").split("\n")
    key = next((i for i, line in enumerate(lines) if line.startswith("K:")), len(lines) - 1)
    tempo = None if header_field(lines, "Q") else PLAYBACK_TEMPO.get(header_field(lines, "M") or "")
    before = [f"Q:{tempo}"] if tempo else []
    after = [f"%%MIDI program {program}"]
    body = [thirds_as_tuplets(line) for line in lines[key + 1:]]
    text_lines = lines[:key] + before + [lines[key]] + after + body
    inserted = [key + 1 + i for i in range(len(before))] + [key + len(before) + 2 + i for i in range(len(after))]
    return Playable("\n".join(text_lines) + "\n", tuple(inserted))


def tune_blocks(abc_text: str) -> list[tuple[int, int, str]]:
    """(tune number, 1-based line of its ``X:``, its block) of each tune of a volume's ABC, in file order."""
    lines = abc_text.split("\n")
    starts, numbers = tune_start_lines(abc_text)
    ends = starts[1:] + [len(lines) + 1]
    return [(number, start, "\n".join(lines[start - 1:end - 1]).rstrip("\n") + "\n")
            for number, start, end in zip(numbers, starts, ends)]


END_OF_TRACK = b"\xff\x2f\x00"  # the meta event every MIDI track ends with
ALL_NOTES_OFF = 123  # MIDI controller: release every note of the channel


def end_all_notes(midi: bytes) -> bytes:
    """A Standard MIDI File whose tracks each end by releasing every note on all 16 channels.

    The controller events take the delta time of each track's End of Track event, which follows
    them at once, so the file plays for just as long. Bytes that are not a MIDI file come back as
    they are.
    """
    if midi[:4] != b"MThd" or len(midi) < 8:
        return midi
    position = 8 + struct.unpack(">I", midi[4:8])[0]
    out = bytearray(midi[:position])
    release = b"\x00".join(bytes([0xB0 + channel, ALL_NOTES_OFF, 0]) for channel in range(16))
    while position + 8 <= len(midi):
        kind, size = midi[position:position + 4], struct.unpack(">I", midi[position + 4:position + 8])[0]
        body = midi[position + 8:position + 8 + size]
        if kind == b"MTrk" and body.endswith(END_OF_TRACK):
            body = body[:-len(END_OF_TRACK)] + release + b"\x00" + END_OF_TRACK
        out += kind + struct.pack(">I", len(body)) + body
        position += 8 + size
    return bytes(out + midi[position:])
