"""The tune validator: is a folk-rnn v2 token sequence a well-formed tune, and what shape has it?

Pure Python over the standard library and ``schemas`` (no Beam: ``transforms.validate`` wraps it
in a Beam transform). The parts:

* ``findings``: reason codes and the ``Findings`` of one tune;
* ``scan``: the header and one pass over the body measuring the bars (the hot loop);
* ``structure``: sections, repeats, endings, and which short bars are pickups;
* ``check``: ``validate_tokens`` putting them together;
* ``summary``: counts over many tunes.

The music itself (durations, broken rhythms, tuplets, bar lengths, pitch heights, tonic) is
``schemas.music``'s.
"""

from folkrnn.schemas.music import TICKS_PER_UNIT, pitch_height
from folkrnn.transforms.validator.check import bar_lengths, validate_tokens
from folkrnn.transforms.validator.findings import (
    BEAM_COLUMNS,
    REASON_CODES,
    REASON_DESCRIPTIONS,
    STRUCTURE_CODES,
    Findings,
)
from folkrnn.transforms.validator.scan import meter_and_mode
from folkrnn.transforms.validator.summary import SummaryTally, format_summary, summarize

__all__ = [
    "BEAM_COLUMNS", "REASON_CODES", "REASON_DESCRIPTIONS", "STRUCTURE_CODES", "TICKS_PER_UNIT", "Findings",
    "SummaryTally", "bar_lengths", "format_summary", "meter_and_mode", "pitch_height", "summarize",
    "validate_tokens",
]
