"""A tune as a page shows it: printed as the books print it, in the key asked for, with its findings.

The printed ABC is ``folkrnn.pipeline.books.with_titles_and_abc`` of the tune's row, the function
that makes a volume's tune blocks (its type's ``R:`` and ``Q:``, the title, the marks of a tune the
validator fails, a final bar line), in ``compile --key``'s choice of key: ``session`` (the books'
default), ``C`` (as generated) or a tonic. The findings are the validator's, run on the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from folkrnn.pipeline.books import with_titles_and_abc
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.tables import findings_table
from folkrnn.transforms.abc.keys import SESSION, check_key_choice
from folkrnn.transforms.validator import Findings, meter_and_mode, validate_tokens

# The key menu of a tune page: compile --key choices (any other tonic is taken from the URL too).
KEY_CHOICES = (SESSION, "C", "D", "G", "A", "E", "F", "Bb")
KEY_LABELS = {SESSION: "session key (as the books)", "C": "C (as generated)"}


class BadKey(UsageError):
    pass


def key_choice(text: str | None, default: str = SESSION) -> str:
    """The key parameter of a URL as ``compile --key`` takes it; a BadKey says what is accepted."""
    if text is None or not text.strip():
        return default
    try:
        return check_key_choice(text)
    except UsageError:
        raise BadKey(f"unknown key {text[:40]!r}: choose session, C (as generated) or a tonic such as D, G, "
                     "Bb, F#") from None


@dataclass
class Tune:
    """One tune ready for a page, its downloads, its notation and its audio."""

    number: int
    title: str
    meter: str | None
    mode: str | None
    tune_type: str | None
    key_choice: str
    key: str  # the printed key, such as Dmaj
    abc: str  # the printed block (X: to the final bar line)
    tokens: list[str]
    findings: Findings
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, value) shown under the title


def printed(number: int, title: str | None, tokens: list[str], truncated: bool = False,
            key: str = SESSION) -> Tune:
    """The tune with these tokens as a book prints it in ``key`` (compile --key)."""
    meter, mode = meter_and_mode(tokens)
    findings = validate_tokens(tokens, truncated)
    table = pa.table({"number": pa.array([number], pa.int64()), "title": pa.array([title], pa.string()),
                      "meter": pa.array([meter], pa.string()), "tokens": pa.array([tokens], pa.list_(pa.string())),
                      "abc": pa.array([None], pa.string())})
    marks = findings_table([findings])
    for name in ("valid", "reasons", "problems", "pickup"):
        table = table.append_column(marks.schema.field(name), marks.column(name))
    row = with_titles_and_abc(table, key).to_pylist()[0]
    return Tune(number, row["title"], meter, mode, row["tune_type"], key, row["key"], row["abc"], tokens, findings)


def tune_of_row(row: dict, key: str = SESSION) -> Tune:
    """A dataset's row (generated, validated, corpus or ingest) as a page's tune."""
    tokens = list(row.get("tokens") or [])
    number = row.get("number") or 1  # an ingest's tunes have ids, no numbers
    tune = printed(int(number), row.get("title"), tokens, bool(row.get("truncated")), key)
    facts = [("volume", row.get("volume")), ("book page", row.get("page")), ("collection", row.get("collection")),
             ("id", row.get("id") if "number" not in row else None), ("original key", row.get("original_key")),
             ("seed", row.get("seed")), ("temperature", row.get("temperature")), ("prime", row.get("prime"))]
    tune.facts = [(label, _shown(value)) for label, value in facts if value not in (None, "")]
    return tune


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
