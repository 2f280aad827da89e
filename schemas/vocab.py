"""The folk-rnn v2 vocabulary: 137 tokens, in model index order.

This is the single source of truth for token ids: index i of ``TOKENS`` is dimension i
of the model's input and output vectors. The order is the one published with the
folk-rnn v2 model (see the seed article); tests pin it.
"""

from __future__ import annotations

from fractions import Fraction

TOKENS: tuple[str, ...] = (
    "d'", "=A,", "^c'", "=e", "=d", "=g", "=f", "=a", "=c", "=b",
    "_G", "_E", "_D", "_C", "_B", "_A", "2<", "2>", "=E", "=D",
    "_B,", "=F", "=A", "4", "=C", "=B", "_g", "8", "_e", "_d",
    "_c", "<", "_a", "(9", "|2", "D", "|1", "(2", "(3", "|:",
    "(7", "(4", "(5", ":|", "9", "3/2", "3/4", "=f'", "2", "d",
    "_E,", "B,", "16", "|", "^A,", "b'", "_e'", "M:9/8", "E,", "</s>",
    "3", "7", "^F,", "=G,", "C", "G", "e'", "_d'", "^f'", "[",
    "b", "c", "z", "g", "^G,", "=F,", "K:Cmin", "K:Cmix", "=c'", "C,",
    "<s>", "]", "=G", "M:12/8", "6", "=E,", "K:Cmaj", ">", "B", "F",
    "c'", "^C,", "5/2", "G,", "f", "=e'", "_b", "_A,", "F,", "/2>",
    "/2<", "f'", "M:6/8", "4>", "M:4/4", "A,", "M:2/4", "=C,", "5", "M:3/4",
    "12", "M:3/2", "K:Cdor", "A", "E", "a'", "(6", "^A", "^C", "^D",
    "^F", "^G", "a", "g'", "D,", "/4", "e", "/3", "7/2", "=B,",
    "/8", "^a", "^c", "^d", "/2", "^f", "^g",
)

VOCAB_SIZE = len(TOKENS)
TOKEN_TO_ID: dict[str, int] = {token: i for i, token in enumerate(TOKENS)}

START = "<s>"
END = "</s>"
START_ID = TOKEN_TO_ID[START]
END_ID = TOKEN_TO_ID[END]

METERS: tuple[str, ...] = ("2/4", "3/4", "4/4", "6/8", "9/8", "12/8", "3/2")
MODES: tuple[str, ...] = ("maj", "min", "dor", "mix")
METER_TOKENS = frozenset(f"M:{m}" for m in METERS)
MODE_TOKENS = frozenset(f"K:C{m}" for m in MODES)

BAR_TOKENS = frozenset({"|", "|:", ":|", "|1", "|2"})
TUPLET_TOKENS = frozenset(t for t in TOKENS if t.startswith("("))
BROKEN_TOKENS = frozenset({">", "<", "2>", "2<", "/2>", "/2<", "4>"})
CHORD_OPEN, CHORD_CLOSE = "[", "]"
REST = "z"

# Length multipliers, in units of L:1/8.
DURATIONS: dict[str, Fraction] = {
    t: Fraction(1, int(t[1:])) if t.startswith("/") else Fraction(t)
    for t in ("/8", "/4", "/3", "/2", "3/4", "3/2", "2", "5/2", "3", "7/2",
              "4", "5", "6", "7", "8", "9", "12", "16")
}
DURATION_TOKENS = frozenset(DURATIONS)
DURATION_OF_LENGTH: dict[Fraction, str] = {v: k for k, v in DURATIONS.items()}

SPECIAL_TOKENS = frozenset({START, END})
PITCH_TOKENS = frozenset(
    t
    for t in TOKENS
    if t not in SPECIAL_TOKENS | METER_TOKENS | MODE_TOKENS | BAR_TOKENS | TUPLET_TOKENS
    | BROKEN_TOKENS | DURATION_TOKENS | {CHORD_OPEN, CHORD_CLOSE, REST}
)

TOKEN_CLASSES: dict[str, frozenset[str]] = {
    "special": SPECIAL_TOKENS,
    "meter": METER_TOKENS,
    "mode": MODE_TOKENS,
    "bar": BAR_TOKENS,
    "tuplet": TUPLET_TOKENS,
    "broken": BROKEN_TOKENS,
    "duration": DURATION_TOKENS,
    "chord": frozenset({CHORD_OPEN, CHORD_CLOSE}),
    "rest": frozenset({REST}),
    "pitch": PITCH_TOKENS,
}


def token_class(token: str) -> str:
    """The class name of a vocabulary token (``pitch``, ``duration``, ``bar`` ...)."""
    for name, members in TOKEN_CLASSES.items():
        if token in members:
            return name
    raise KeyError(f"not a folk-rnn v2 token: {token!r}")


def encode(tokens: list[str]) -> list[int]:
    """Token strings to ids; raises KeyError naming the first unknown token."""
    try:
        return [TOKEN_TO_ID[t] for t in tokens]
    except KeyError as err:
        raise KeyError(f"not a folk-rnn v2 token: {err.args[0]!r}") from None


def decode(ids: list[int]) -> list[str]:
    """Token ids to strings."""
    return [TOKENS[i] for i in ids]
