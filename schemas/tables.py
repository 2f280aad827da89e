"""Arrow schemas of every table the pipeline writes. Writers and readers use these, nothing else.

Each schema is built once, from the parts above it; ``findings_table`` is the one way the
validator's findings become Arrow columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

# What the validator says of a tune (folkrnn.transforms.validator.Findings), as columns.
PROBLEM = pa.struct([("code", pa.string()), ("bar", pa.int32()), ("token", pa.int32()), ("message", pa.string())])
SECTION = pa.struct([
    ("label", pa.string()), ("bars", pa.int32()), ("repeats", pa.bool_()), ("has_endings", pa.bool_()),
    ("ends_on_tonic", pa.bool_()), ("start_bar", pa.int32()),
])
FINDINGS = pa.schema([
    pa.field("valid", pa.bool_()),
    pa.field("reasons", pa.list_(pa.string())),
    pa.field("problems", pa.list_(PROBLEM)),
    pa.field("bar_count", pa.int32()),
    pa.field("bar_lengths_failed", pa.list_(pa.float32())),
    pa.field("sections", pa.list_(SECTION)),
    pa.field("form", pa.string()),
    pa.field("standard_form", pa.bool_()),
    pa.field("ends_on_tonic", pa.bool_()),
    pa.field("pickup", pa.float32()),
])


def findings_row(findings: Any) -> dict:
    """One tune's findings (a ``folkrnn.transforms.validator.Findings``) as the FINDINGS columns, by name."""
    return {name: getattr(findings, name) for name in FINDINGS.names}


def findings_table(findings: Sequence[Any]) -> pa.Table:
    """Findings of many tunes (``Findings``, one a tune, in order) as a FINDINGS table.

    Attributes are read directly: ``Findings.as_row()`` (``dataclasses.asdict``) deep-copies every
    list, a cost Arrow's own copy makes useless.
    """
    return pa.table([pa.array([getattr(f, field.name) for f in findings], type=field.type) for field in FINDINGS],
                    schema=FINDINGS)


# One row per kept tune of the ingest (tunes/part-*.parquet), with the validator's findings: the
# ingest stores them on real tunes too, so both corpora compare on one measure.
TUNES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # stable: collection, file and position
        pa.field("source", pa.string(), nullable=False),  # file path or URL
        pa.field("collection", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # 0-based index of the tune in its source
        pa.field("title", pa.string()),
        pa.field("original_meter", pa.string()),
        pa.field("original_key", pa.string()),
        pa.field("meter_mapped", pa.bool_()),  # C| or 2/2 written as M:4/4
        pa.field("transpose", pa.int8()),  # semitones added to reach tonic C
        pa.field("meter", pa.string()),  # e.g. "6/8"
        pa.field("mode", pa.string()),  # maj, min, dor, mix
        pa.field("tokens", pa.list_(pa.string())),  # M:.. K:.. body, without <s> and </s>
        pa.field("token_ids", pa.list_(pa.int16())),
        pa.field("length", pa.int32()),
        pa.field("content_hash", pa.string()),  # sha1 of the space-joined tokens
        pa.field("split", pa.string()),  # train or valid, from a hash of id
        pa.field("encoding", pa.string()),  # utf-8, or latin-1 when the file was not UTF-8
        pa.field("removed", pa.map_(pa.string(), pa.int32())),  # what cleaning dropped, by kind
        *FINDINGS,
    ]
)

# One row per record that could not become a tune (rejects/part-*.parquet).
REJECTS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # read, fetch, header, clean, tokenize, ...
        pa.field("reason", pa.string(), nullable=False),  # a reason code, e.g. meter_not_in_vocab
        pa.field("detail", pa.string()),  # what a person needs to find and fix it
        pa.field("raw", pa.string()),  # the record's text as read
    ]
)

# One row per tune whose token sequence was already kept under another id.
DUPLICATES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("duplicate_of", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
    ]
)

INGEST_TABLES: dict[str, pa.Schema] = {"tunes": TUNES, "rejects": REJECTS, "duplicates": DUPLICATES}

# One row per generated tune (generate writes shards of these: generated/part-*.parquet).
GENERATED = pa.schema(
    [
        pa.field("number", pa.int64(), nullable=False),  # tune number in its run: X:<number>
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("prime", pa.string()),  # the priming tokens, space-joined ("" when none)
        pa.field("checkpoint_id", pa.string()),  # content hash of the checkpoint that made it
        pa.field("meter", pa.string()),  # e.g. "6/8" (null when the tune has no meter token)
        pa.field("mode", pa.string()),  # maj, min, dor, mix
        pa.field("title", pa.string()),  # deterministic from the number
        pa.field("tokens", pa.list_(pa.string())),  # M:.. K:.. body, without <s> and </s>
        pa.field("token_ids", pa.list_(pa.int16())),
        pa.field("length", pa.int32()),
        pa.field("truncated", pa.bool_()),  # stopped at --max-tokens before </s>
        pa.field("abc", pa.string()),  # the tune as ABC 2.1 text
        # --well-formed runs: sum over the model's draws of log(probability mass the grammar allowed),
        # <= 0; 0: the grammar never changed a choice. Null for unconstrained runs.
        pa.field("constraint_log_mass", pa.float64()),
    ]
)
# Columns added after the first datasets were written: a dataset without them reads as nulls.
LATER_GENERATED_COLUMNS = ("constraint_log_mass",)

# Generated tunes with the validator's findings (validate rewrites the shards with these columns).
VALIDATED = pa.schema([*GENERATED, *FINDINGS])

# The published corpus: one hive partition per volume (corpus/volume=3/part-0.parquet); "volume"
# is the partition column, so it is not stored inside the files. tune_type: reel, jig, ... from
# the meter and rhythm (folkrnn.transforms.tune_types; null without a meter); page: where the
# tune starts in its volume's PDF (null without a PDF); key: the key the book prints the tune in
# (compile --key), e.g. Dmaj; the tokens stay in C, as generated.
CORPUS = pa.schema([*VALIDATED, pa.field("tune_type", pa.string()), pa.field("page", pa.int32()),
                    pa.field("key", pa.string())])
CORPUS_PARTITIONING = pa.schema([pa.field("volume", pa.int32())])
