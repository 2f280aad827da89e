"""The datasets a ``folkrnn serve`` page browses: opened once, searched with Arrow expressions.

Each dataset (a compile corpus, a generate or validate run, an ingest) is opened with
``folkrnn.pipeline.datasets.arrow_dataset``, as ``folkrnn query`` opens it. Its small columns
(number, title, meter, mode, form, valid, volume, page ...) are read into memory once, sorted by
tune number: a search of 30,000 tunes is then an Arrow filter of a few milliseconds. A tune page
reads that one tune's row from the Parquet files, with its volume partition as a filter when there
is one.

A search never runs SQL. Each filter is a whitelisted field (``FILTERS``) whose value is checked
against what the dataset holds (a meter must be one of its meters, a number a number) and becomes
an Arrow compute expression with the value as a typed literal; title words are matched as plain
substrings, never as patterns. An unknown value is a ``BadInput`` naming what the field takes.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from folkrnn.schemas.errors import UsageError

PAGE_SIZE = 50
# Columns kept in memory for searching and listing (those the dataset has).
LISTED = ("number", "id", "title", "meter", "mode", "form", "valid", "tune_type", "key", "volume", "page",
          "collection", "length")
# Columns a tune page reads (those the dataset has): the listed ones, the tokens and the findings.
TUNE_COLUMNS = (*LISTED, "tokens", "truncated", "reasons", "problems", "pickup", "bar_count", "sections",
                "standard_form", "ends_on_tonic", "original_key", "seed", "temperature", "prime")
ROWS_CACHED = 256  # tune rows kept in memory (a tune page, its audio and its MIDI read the same row)
MAX_TITLE_WORDS = 8
MAX_TEXT = 200  # characters of a text filter


class BadInput(Exception):
    """Input a page cannot use (an unknown meter, a malformed number): shown to the user, status 400."""


class NotFound(Exception):
    """No such dataset, tune or page: status 404."""


@dataclass(frozen=True)
class Filter:
    """A search field of the browse page: its query parameter, column, label and kind.

    kinds: ``choice`` (one of the values the dataset holds), ``bool`` (yes/no), ``words`` (every
    word a substring, any case), ``number`` (N or N-M).
    """

    param: str
    column: str
    label: str
    kind: str


FILTERS = (
    Filter("meter", "meter", "Meter", "choice"),
    Filter("mode", "mode", "Mode", "choice"),
    Filter("type", "tune_type", "Type", "choice"),
    Filter("form", "form", "Form", "choice"),
    Filter("valid", "valid", "Valid", "bool"),
    Filter("volume", "volume", "Volume", "choice"),
    Filter("collection", "collection", "Collection", "choice"),
    Filter("title", "title", "Title words", "words"),
    Filter("number", "number", "Number", "number"),
)
NUMBER_RANGE = re.compile(r"\s*(\d{1,18})\s*(?:-\s*(\d{1,18})\s*)?")


def dataset_name(path: str, taken: Sequence[str]) -> str:
    """A short name for a dataset in URLs: its folder's name (``corpus``, ``generated``), the
    parent's when that is a generic one, made unique with -2, -3 ..."""
    parts = [p for p in os.path.abspath(path).rstrip("/").split("/") if p]
    name = parts[-1] if parts else "dataset"
    if name in ("corpus", "generated", "tunes") and len(parts) > 1:
        name = f"{parts[-2]}-{name}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "dataset"
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}-{n}"
    return unique


@dataclass
class Dataset:
    """One served dataset: its listing in memory and the way to its full rows."""

    name: str
    path: str
    arrow: Any  # pyarrow.dataset.Dataset
    listing: pa.Table  # LISTED columns, sorted by the key column
    key_column: str  # number (generated tunes, a corpus) or id (an ingest)
    choices: dict[str, list]  # filter param -> the values the dataset holds, most frequent first
    _rows: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def filters(self) -> list[Filter]:
        """The filters this dataset has columns for."""
        return [f for f in FILTERS if f.column in self.listing.column_names]

    @property
    def count(self) -> int:
        return self.listing.num_rows

    def search(self, query: Mapping[str, str], page: int = 1) -> tuple[pa.Table, int]:
        """(the rows of one page, how many match) for the browse form's fields in ``query``."""
        matched = self.listing
        expression = self.expression(query)
        if expression is not None:
            matched = matched.filter(expression)
        last = max(1, -(-matched.num_rows // PAGE_SIZE))
        if page < 1 or page > last:
            raise BadInput(f"page {page} does not exist: the search has {last} page{'s' if last > 1 else ''}")
        return matched.slice((page - 1) * PAGE_SIZE, PAGE_SIZE), matched.num_rows

    def expression(self, query: Mapping[str, str]) -> Any:
        """The Arrow expression of the filled-in fields (None: every tune)."""
        parts = [self.condition(f, query[f.param].strip()) for f in self.filters
                 if query.get(f.param, "").strip()]
        if not parts:
            return None
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part
        return combined

    def condition(self, spec: Filter, text: str) -> Any:
        column = pc.field(spec.column)
        kind = self.listing.schema.field(spec.column).type
        if len(text) > MAX_TEXT:
            raise BadInput(f"{spec.label.lower()} is too long ({len(text)} characters; at most {MAX_TEXT})")
        if spec.kind == "choice":
            held = {str(v): v for v in self.choices.get(spec.param, [])}
            if text not in held:
                shown = ", ".join(list(held)[:20]) + (" ..." if len(held) > 20 else "")
                raise BadInput(f"unknown {spec.label.lower()} {text!r}: this dataset's are {shown}")
            return column == pa.scalar(held[text], kind)
        if spec.kind == "bool":
            if text not in ("yes", "no"):
                raise BadInput(f"{spec.label.lower()} takes yes or no, not {text!r}")
            return column == pa.scalar(text == "yes", pa.bool_())
        if spec.kind == "words":
            words = text.split()
            if len(words) > MAX_TITLE_WORDS:
                raise BadInput(f"at most {MAX_TITLE_WORDS} title words, got {len(words)}")
            condition = None
            for word in words:  # a plain substring (not a pattern), any case
                found = pc.match_substring(column, word, ignore_case=True)
                condition = found if condition is None else condition & found
            return condition
        match = NUMBER_RANGE.fullmatch(text)
        if not match:
            raise BadInput(f"number takes a tune number or a range such as 488 or 100-200, not {text!r}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise BadInput(f"the number range {text} runs backwards: write {last}-{first}")
        return (column >= pa.scalar(first, kind)) & (column <= pa.scalar(last, kind))

    def key_of(self, text: str) -> Any:
        """A tune's key (its number, or an ingest's id) from the URL, checked."""
        if self.key_column == "number":
            if not re.fullmatch(r"\d{1,18}", text.strip()):
                raise BadInput(f"a tune number is a whole number, not {text!r}")
            return int(text)
        if not text or len(text) > 1000:
            raise BadInput("give a tune id")
        return text

    def row(self, key: Any) -> dict:
        """The full row of one tune (a NotFound when the dataset has no such tune)."""
        with self._lock:
            if key in self._rows:
                self._rows.move_to_end(key)
                return self._rows[key]
        found = self.listing.filter(pc.field(self.key_column) == pa.scalar(key, self.listing.schema.field(
            self.key_column).type))
        if found.num_rows == 0:
            raise NotFound(f"no tune {'numbered ' if self.key_column == 'number' else ''}{key} in {self.name}")
        condition = pc.field(self.key_column) == pa.scalar(key, self.listing.schema.field(self.key_column).type)
        if "volume" in found.column_names:  # only its partition is opened
            condition = condition & (pc.field("volume") == found.column("volume")[0])
        columns = [c for c in TUNE_COLUMNS if c in self.arrow.schema.names]
        rows = self.arrow.to_table(columns=columns, filter=condition).slice(0, 1).to_pylist()
        if not rows:
            raise NotFound(f"no tune {key} in {self.name}")
        with self._lock:
            self._rows[key] = rows[0]
            while len(self._rows) > ROWS_CACHED:
                self._rows.popitem(last=False)
        return rows[0]

    def listing_value(self, key: Any, column: str) -> Any:
        """One listed column of one tune (None when the dataset has no such column)."""
        if column not in self.listing.column_names:
            return None
        keys = self.listing.column(self.key_column)
        index = pc.index(keys, pa.scalar(key, keys.type)).as_py()
        return self.listing.column(column)[index].as_py() if index >= 0 else None

    def neighbours(self, key: Any) -> tuple[Any, Any]:
        """The keys of the tunes before and after ``key`` in the listing (None at either end)."""
        keys = self.listing.column(self.key_column)
        index = pc.index(keys, pa.scalar(key, keys.type)).as_py()
        before = keys[index - 1].as_py() if index > 0 else None
        after = keys[index + 1].as_py() if 0 <= index < len(keys) - 1 else None
        return before, after


def open_dataset(path: str, name: str) -> Dataset:
    """Open a dataset for serving: its listing read into memory; a UsageError says what is wrong."""
    from folkrnn.pipeline.datasets import arrow_dataset

    arrow = arrow_dataset(path)
    names = arrow.schema.names
    key_column = "number" if "number" in names else "id" if "id" in names else None
    if key_column is None or "tokens" not in names:
        raise UsageError(f"{path} has no number (or id) and tokens columns: give tunes written by folkrnn generate, "
                         "validate, compile (its corpus) or ingest (its tunes)")
    try:
        listing = arrow.to_table(columns=[c for c in LISTED if c in names])
    except (pa.ArrowException, OSError) as err:
        raise UsageError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    listing = listing.take(pc.sort_indices(listing, [(key_column, "ascending")])).combine_chunks()
    choices = {}
    for spec in FILTERS:
        if spec.kind == "choice" and spec.column in listing.column_names:
            counts = pc.value_counts(listing.column(spec.column)).to_pylist()
            held = [c for c in counts if c["values"] not in (None, "")]
            order = (lambda c: c["values"]) if spec.param == "volume" else (lambda c: (-c["counts"], str(c["values"])))
            choices[spec.param] = [c["values"] for c in sorted(held, key=order)]
    return Dataset(name, path, arrow, listing, key_column, choices)


def open_library(paths: Sequence[str]) -> dict[str, Dataset]:
    """The datasets to serve, by their URL names, in the order given."""
    library: dict[str, Dataset] = {}
    for path in paths:
        name = dataset_name(path, list(library))
        library[name] = open_dataset(path, name)
    return library


def volume_pdf(dataset: Dataset, volume: int) -> str | None:
    """The typeset PDF of a corpus's volume (``compile``'s ``volumes/folkrnn-volume-NN.pdf`` beside
    ``corpus/``), or None when there is none."""
    import glob

    path = os.path.abspath(dataset.path)
    base = os.path.dirname(path) if os.path.basename(path) == "corpus" else path
    for pdf in glob.glob(os.path.join(glob.escape(base), "volumes", "folkrnn-volume-*.pdf")):
        digits = os.path.basename(pdf)[len("folkrnn-volume-"):-len(".pdf")]
        if digits.isdigit() and int(digits) == volume:
            return pdf
    return None
