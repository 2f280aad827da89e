"""A tune book volume as one ABC 2.1 text, and the way back from a line of it to its tune.

The text is a pure function of the rows (no dates, no versions, no paths), so a rebuild from the
same inputs gives the same bytes. Each tune block is what ``detokenize`` writes, made into a book's
tune (``tune_abc``): its type as ``R:`` and a session tempo as ``Q:`` (``folkrnn.transforms.tune_types``),
a final bar line, and for a tune the validator failed a line above its music saying why. The
tokens are not touched: only the printed text is. ``folkrnn.pipeline.books`` writes it; abcm2ps and abc2midi read
it, and their messages name its lines (``tune_at_line`` says whose).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from folkrnn.transforms.abc.keys import KEEP, in_key
from folkrnn.transforms.abc.tokenize import detokenize
from folkrnn.transforms.tune_types import TuneType, classify

# Marks a tune the validator failed, in the contents, the index and above its music. ASCII: abcm2ps
# sets a line with a character outside Latin-1 in another (Pango's) font, which looks bold.
NOT_WELL_FORMED = "*"
NOT_WELL_FORMED_NOTE = (f"{NOT_WELL_FORMED} not well-formed (folkrnn validate): printed as generated, "
                        "with what is wrong above the tune")


def plain_text(text: str) -> str:
    """A user's text made safe for one line of ABC and of abcm2ps text: abcm2ps reads ``$`` as a
    font switch and ``\\`` as an escape, ``%`` starts an ABC comment, a newline ends a field."""
    text = "".join(" " if ch in "\r\n\t" or ord(ch) < 32 else ch for ch in text)
    text = text.replace("$", "").replace("%", "").replace("\\", "/").replace('"', "'")
    return " ".join(text.split())


def with_final_bar(body_line: str) -> str:
    """The last line of a tune's body ending with a final bar line: ``|]``, or the closing
    repeat ``:|`` it has; a start of a repeat with nothing after it is dropped."""
    text = body_line.rstrip()
    while text.endswith("|:"):
        text = text[:-2].rstrip()
    if not text or text.endswith((":|", "|]")):
        return text
    if text.endswith("|"):
        return text + "]"
    return text + " |]"


def problems_text(row: Mapping) -> str:
    """What the validator found wrong with a tune, in one short line: each reason once, with the
    bars it names counted as a musician does (from 1, a pickup being bar 0)."""
    first_bar = 0 if (row.get("pickup") or 0) > 0 else 1
    parts = []
    for reason in row.get("reasons") or []:
        bars = sorted({p["bar"] + first_bar for p in row.get("problems") or [] if p["code"] == reason and p["bar"] >= 0})
        where = ""
        if bars:
            shown = ", ".join(str(b) for b in bars[:4]) + (" ..." if len(bars) > 4 else "")
            where = f" (bar{'s' if len(bars) > 1 else ''} {shown})"
        parts.append(reason.replace("_", " ") + where)
    return f"{NOT_WELL_FORMED} Not well-formed: " + ("; ".join(parts) or "see the report")


def book_tune(block: str, kind: TuneType | None, problems: str | None) -> str:
    """A tune block as ``detokenize`` wrote it, with ``R:`` after ``T:`` and ``Q:`` before ``K:``
    when it has a type, a ``%%center`` line of its problems after ``K:`` (abcm2ps prints it under
    the title; other readers take it for a comment), and a final bar line (not after a chord
    left open, which its ``]`` would close)."""
    lines = block.rstrip("\n").split("\n")
    k = next(i for i, line in enumerate(lines) if line.startswith("K:"))
    header, body = lines[:k], lines[k + 1:]
    if kind is not None:
        t = next((i for i, line in enumerate(header) if line.startswith("T:")), 0)
        header = [*header[:t + 1], f"R:{kind.name}", *header[t + 1:], f"Q:{kind.tempo}"]
    notes = ["%%textfont Times-Italic 11", f"%%center {plain_text(problems)}"] if problems else []
    text = "\n".join(body)
    if body and text.count("[") == text.count("]"):  # a "]" after a chord left open would close it
        body[-1] = with_final_bar(body[-1])
    return "\n".join([*header, lines[k], *notes, *body]) + "\n"


def tune_abc(row: Mapping, key: str = KEEP) -> str:
    """``printed_tune``'s block alone."""
    return printed_tune(row, key)[0]


def printed_tune(row: Mapping, key: str = KEEP) -> tuple[str, str]:
    """(one tune block, the key it is printed in such as ``Dmaj``). The block: ``X:`` number, ``T:`` title, ``R:`` type, ``M:``, ``L:``, ``Q:`` tempo,
    ``K:``, the problems of a tune the validator failed, the body with a final bar line.

    ``row`` needs number, title and tokens; ``valid`` False with ``reasons``, ``problems`` and
    ``pickup`` marks the tune; ``kind`` is its ``classify`` when already made. The tune is written
    in the key ``folkrnn.transforms.abc.keys.in_key`` gives for compile's ``--key`` choice ``key``
    (C: as generated).
    """
    tokens = list(row["tokens"] or [])
    kind = row["kind"] if "kind" in row else classify(tokens)
    printed, key_name = in_key(tokens, key)
    block = detokenize(printed, number=int(row["number"]), title=plain_text(row["title"] or ""), typeset=True)
    return book_tune(block, kind, problems_text(row) if row.get("valid") is False else None), key_name


def volume_abc(rows: Sequence[Mapping], volume: int, n_volumes: int, book_title: str,
               blocks: Sequence[str] | None = None, generated_by: str = "") -> str:
    """A volume as one ABC 2.1 text: a comment header, then one block per tune, blank-line separated.

    ``rows`` need number, title and tokens, in the order to print; ``blocks`` are the tunes' ABC
    when already made (``tune_abc`` of each row: detokenizing is most of the work);
    ``generated_by`` names the checkpoints (``generated_by_text``). Identical input, identical text.
    """
    first, last = (int(rows[0]["number"]), int(rows[-1]["number"])) if rows else (0, 0)
    header = [
        "%abc-2.1",
        f"% {plain_text(book_title)}, Volume {volume} of {n_volumes}: tunes {first}-{last} ({len(rows)} tunes)",
        f"% {plain_text(generated_by or generated_by_text([]))}, with folkrnn.",
        "% X: is the generation number; titles are made up from it (transforms/titles.py).",
    ]
    tunes = blocks if blocks is not None else [tune_abc(row) for row in rows]
    return "\n".join(header) + "\n\n" + "\n".join(tunes)


def generated_by_text(checkpoints: Sequence[tuple[str | None, str | None]]) -> str:
    """"Generated by ..." naming the checkpoints that made a volume's tunes: (name, id) pairs,
    name None when unknown. Three or fewer are named with their ids; more are "several"."""
    known = sorted({(name or "", cid or "") for name, cid in checkpoints if name or cid}, key=lambda c: (c[1], c[0]))
    if not known:
        return "Generated by a checkpoint the dataset does not record"
    if len(known) > 3:
        return f"Generated by several checkpoints ({len(known)}, listed in the volume report)"
    named = [f"{name} (checkpoint {cid})" if name and cid else name or f"checkpoint {cid}" for name, cid in known]
    if any(not (name or cid) for name, cid in checkpoints):  # some rows record no checkpoint
        named.append("a checkpoint not recorded")
    return "Generated by " + (named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1])


TuneStarts = tuple[list[int], list[int]]  # (1-based line of each X: field, its tune number), in file order


def tune_start_lines(abc_text: str) -> TuneStarts:
    """1-based line of each ``X:`` field and its tune number, in file order (for message lookup)."""
    lines, numbers = [], []
    for i, line in enumerate(abc_text.split("\n"), start=1):
        if line.startswith("X:"):
            lines.append(i)
            numbers.append(int(line[2:].strip()))
    return lines, numbers


def tune_at_line(line: int, starts: TuneStarts) -> int | None:
    """The tune whose block holds ``line``, None for the file header."""
    k = bisect.bisect_right(starts[0], line) - 1
    return starts[1][k] if k >= 0 else None
