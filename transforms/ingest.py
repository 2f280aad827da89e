"""The ingest stage's pure functions: raw tune -> cleaned, transposed, tokenized row or reject row;
which of several equal tunes is kept; which shard a row goes to; the summary's counts.

``folkrnn.pipeline.beam.ingest`` wraps them in Beam transforms.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Iterable

from folkrnn.schemas.tables import findings_row
from folkrnn.schemas.vocab import METER_TOKENS, MODE_TOKENS, TOKEN_TO_ID
from folkrnn.transforms.abc.errors import TuneRejected
from folkrnn.transforms.abc.tokenize import Tokenized, tokenize_tune
from folkrnn.transforms.records import RawTune, record_id, reject_row
from folkrnn.transforms.validator import validate_tokens

REJECTS = "rejects"
DUPLICATES = "duplicates"


def split_of(tune_id: str, valid_fraction: float) -> str:
    """A deterministic train/valid split from a hash of the id (same id, same split, any runner)."""
    fraction = int(hashlib.sha256(tune_id.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    return "valid" if fraction < valid_fraction else "train"


def _tokenize_folkrnn_block(raw: RawTune) -> Tokenized:
    tokens = raw.text.split()
    unknown = [t for t in tokens if t not in TOKEN_TO_ID]
    if unknown:
        raise TuneRejected("tokenize", "token_not_in_vocab",
                           f"tokens not in the v2 vocabulary: {' '.join(sorted(set(unknown))[:10])}")
    if len(tokens) < 3 or tokens[0] not in METER_TOKENS or tokens[1] not in MODE_TOKENS:
        raise TuneRejected("header", "missing_header", "a folk-rnn tune starts with an M: and a K: token")
    return Tokenized(tokens=tokens, meter=tokens[0][2:], mode=tokens[1][3:], transpose=0,
                     original_meter=tokens[0][2:], original_key=tokens[1][2:], meter_mapped=False, title=None)


def tokenize_record(raw: RawTune, valid_fraction: float = 0.05) -> dict:
    """A tunes-table row for one raw tune; raises TuneRejected saying why it cannot be one."""
    if raw.meta.get("format") == "folkrnn-text":
        result = _tokenize_folkrnn_block(raw)
    else:
        result = tokenize_tune(raw.text)
    tune_id = raw.id
    return {
        "id": tune_id,
        "source": raw.source,
        "collection": raw.collection,
        "position": raw.position,
        "title": raw.title or result.title,
        "original_meter": result.original_meter,
        "original_key": result.original_key,
        "meter_mapped": result.meter_mapped,
        "transpose": result.transpose,
        "meter": result.meter,
        "mode": result.mode,
        "tokens": result.tokens,
        "token_ids": [TOKEN_TO_ID[t] for t in result.tokens],
        "length": len(result.tokens),
        "content_hash": result.content_hash,
        "split": split_of(tune_id, valid_fraction),
        "encoding": raw.encoding,
        "removed": sorted(result.removed.items()),
        **findings_row(validate_tokens(result.tokens)),
    }


def process_record(raw: RawTune, valid_fraction: float = 0.05) -> tuple[str, dict]:
    """("tune", row) or ("reject", row): never raises, whatever the text."""
    try:
        return "tune", tokenize_record(raw, valid_fraction)
    except TuneRejected as err:
        stage, reason, detail = err.stage, err.reason, err.detail
    except Exception as err:  # a bug must not lose the record: it becomes a reject that says so
        stage, reason, detail = "tokenize", "internal_error", f"{type(err).__name__}: {err}"
    return "reject", reject_row(collection=raw.collection, source=raw.source, position=raw.position,
                                stage=stage, reason=reason, detail=detail, raw=raw.text)


# What telling duplicates apart needs of a tune row, small enough to gather for every tune:
# (SHA-1 of the tokens (20 bytes), source, collection, position, meter, mode); the id follows
# from source, collection and position (``record_id``).
DedupKey = tuple[bytes, str, str, int, str, str]


def dedup_key(row: dict) -> DedupKey:
    return (bytes.fromhex(row["content_hash"]), row["source"], row["collection"], row["position"],
            row["meter"], row["mode"])


def id_of_key(key: DedupKey) -> str:
    _, source, collection, position, _, _ = key
    return record_id(collection, source, position)


def keep_first(keys: Iterable[DedupKey]) -> tuple[dict, list[dict]]:
    """Of tunes with the same tokens, the one with the smallest id (its id, collection, meter and
    mode: what the summary counts) and duplicate rows for the others."""
    ordered = sorted((id_of_key(key), key) for key in keys)
    kept_id, (digest, _, collection, _, meter, mode) = ordered[0]
    duplicates = [{
        "id": row_id, "source": source, "collection": coll, "position": position, "duplicate_of": kept_id,
        "content_hash": digest.hex(),
    } for row_id, (_, source, coll, position, _, _) in ordered[1:]]
    return {"id": kept_id, "collection": collection, "meter": meter, "mode": mode}, duplicates


def shard_of(row_id: str, num_shards: int) -> int:
    return zlib.crc32(row_id.encode("utf-8")) % num_shards


def shard_name(shard: int, num_shards: int) -> str:
    return f"part-{shard:05d}-of-{num_shards:05d}.parquet"


# -- the summary -----------------------------------------------------------------------------

# Events the summary counts: tuples, so a name holding any character (a folder "pipe|coll") stays whole.
#   ("read", collection)                 a record came in
#   ("kept", collection, meter, mode)    ("duplicate", collection)    ("rejected", collection, reason)
#   ("repeated", path)                   a source named once more than needed (read once all the same)
#   ("folkrnn_text", source)             a tune of a file recognised as folk-rnn text by its layout


def outcome_events(kind: str):
    """Row -> a small tuple the summary combiner counts."""
    def event(row: dict) -> tuple:
        if kind == "tunes":
            return ("kept", row["collection"], row["meter"], row["mode"])
        if kind == "rejects":
            return ("rejected", row["collection"], row["reason"])
        return ("duplicate", row["collection"])
    return event


def summary_of(acc: Counter) -> dict:
    """The ingest summary from the counts of its events (see above)."""
    summary: dict = {"read": 0, "kept": 0, "duplicates": 0, "rejected": 0, "rejects_by_reason": Counter(),
                     "by_collection": {}, "meters": Counter(), "modes": Counter(),
                     "repeated_sources": {}, "read_as_folkrnn_text": {}}
    for key, count in acc.items():
        kind, collection, *rest = key
        if kind == "repeated":  # named count + 1 times, read once
            summary["repeated_sources"][collection] = count + 1
            continue
        if kind == "folkrnn_text":
            summary["read_as_folkrnn_text"][collection] = count
            continue
        per = summary["by_collection"].setdefault(
            collection, {"read": 0, "kept": 0, "duplicates": 0, "rejected": 0})
        total = {"read": "read", "kept": "kept", "duplicate": "duplicates", "rejected": "rejected"}[kind]
        summary[total] += count
        per[total] += count
        if kind == "kept":
            summary["meters"][rest[0]] += count
            summary["modes"][rest[1]] += count
        elif kind == "rejected":
            summary["rejects_by_reason"][rest[0]] += count
    for name in ("rejects_by_reason", "meters", "modes"):
        # most common first; ties by name, so the file is the same whatever order events came in
        summary[name] = dict(sorted(summary[name].items(), key=lambda item: (-item[1], item[0])))
    for name in ("by_collection", "repeated_sources", "read_as_folkrnn_text"):
        summary[name] = dict(sorted(summary[name].items()))
    return summary
