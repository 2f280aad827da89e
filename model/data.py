"""Training data: tunes as token ids, the train/valid split, and length-bucketed batches.

A tune here is the ingest's ``token_ids``: ``M:.. K:.. body`` without ``<s>``/``</s>``. The
model reads ``<s> tune`` and predicts ``tune </s>``; batches group tunes of similar length and
pad them, with padded targets set to ``IGNORE`` so that padding never reaches the loss.

Batch order is a pure function of (seed, epoch), so a run that resumes at (epoch, batch index)
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from folkrnn.schemas.errors import UsageError, setting
from folkrnn.schemas.vocab import END_ID, START_ID, TOKEN_TO_ID, VOCAB_SIZE

IGNORE = -100  # target id of padding; F.cross_entropy's default ignore_index


@dataclass
class TuneSet:
    """Tunes as int64 id arrays (no <s>/</s>), split into train and valid."""

    train: list[np.ndarray]
    valid: list[np.ndarray]
    source: str

    def fingerprint(self) -> str:
        """sha256 of every tune of both splits, in order: a resume must see the same data."""
        digest = hashlib.sha256()
        for split in (self.train, self.valid):
            digest.update(len(split).to_bytes(8, "little"))
            for tune in split:
                digest.update(len(tune).to_bytes(4, "little"))
                digest.update(np.asarray(tune, dtype=np.int16).tobytes())
        return digest.hexdigest()[:16]

    def tokens(self, split: str) -> int:
        """Number of predicted tokens (each tune's tokens plus </s>) in a split."""
        return sum(len(t) + 1 for t in getattr(self, split))


def load_tunes(path: str, valid_fraction: float = 0.05, only_valid: bool = False) -> TuneSet:
    """Read the ingest's Parquet (a folder or file; its ``split`` column decides) or a folk-rnn
    text file (split deterministically by content hash with ``valid_fraction``). ``only_valid``
    keeps the Parquet tunes the validator passed (its ``valid`` column)."""
    if not os.path.exists(path):
        raise UsageError(f"no such file or folder: {path} (give the ingest's output folder, a Parquet "
                         "file, or a folk-rnn text file)")
    if os.path.isdir(path) or path.endswith(".parquet"):
        return read_parquet_tunes(path, only_valid)
    if only_valid:
        raise UsageError(f"{setting('only_valid')} needs the ingest's Parquet (it has the validator's verdicts)")
    train, valid = split_by_hash(read_folkrnn_text(path), valid_fraction)
    return TuneSet(train=train, valid=valid, source=path)


def ingest_tunes_path(path: str) -> str:
    """The Parquet tunes of ``path``: its ``tunes/`` folder when it is the ingest's --out folder."""
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "tunes")):
        return os.path.join(path, "tunes")
    return path


def read_parquet_tunes(path: str, only_valid: bool = False) -> TuneSet:
    """Tunes of the ingest's ``TUNES`` table: ``token_ids`` and ``split`` columns."""
    import pyarrow.parquet as pq

    path = ingest_tunes_path(path)
    try:
        table = pq.read_table(path, columns=["token_ids", "split"] + (["valid"] if only_valid else []))
    except Exception as err:  # pyarrow raises several types; all mean "not the ingest's tunes"
        raise UsageError(f"cannot read tunes from {path}: {err} (expected the ingest's tunes/*.parquet)") from None
    return tunes_from_table(table, path, only_valid)


def tunes_from_table(table, source: str, only_valid: bool = False) -> TuneSet:
    """A TuneSet from an Arrow table with the ingest's ``token_ids`` and ``split`` columns (and
    ``valid`` with ``only_valid``), in the table's row order. ``source`` names it in messages."""
    if only_valid:
        table = table.filter(table.column("valid").fill_null(False))
    ids = table.column("token_ids").to_pylist()
    splits = table.column("split").to_pylist()
    train, valid = [], []
    for k, (tune, split) in enumerate(zip(ids, splits)):
        if not tune:
            continue
        arr = np.asarray(tune, dtype=np.int64)
        if arr.min() < 0 or arr.max() >= VOCAB_SIZE:
            raise UsageError(f"{source}: row {k} has token ids outside 0..{VOCAB_SIZE - 1}; re-run the ingest")
        (valid if split == "valid" else train).append(arr)
    if not train:
        raise UsageError(f"{source} holds no training tunes (split == 'train')")
    return TuneSet(train=train, valid=valid, source=source)


def read_folkrnn_text(path: str) -> list[np.ndarray]:
    """folk-rnn's text layout: per tune an ``M:`` line, a ``K:`` line and a line of
    space-separated tokens; tunes separated by a blank line."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    tunes = []
    for number, block in enumerate(b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()):
        tokens = block.split()
        if tokens and tokens[0] == "<s>":
            tokens = tokens[1:]
        if tokens and tokens[-1] == "</s>":
            tokens = tokens[:-1]
        unknown = [t for t in tokens if t not in TOKEN_TO_ID]
        if unknown:
            raise UsageError(f"{path}: tune {number + 1} has tokens outside the folk-rnn v2 vocabulary: "
                             f"{' '.join(sorted(set(unknown))[:5])} (tokenize it with `folkrnn ingest` first)")
        if tokens:
            tunes.append(np.array([TOKEN_TO_ID[t] for t in tokens], dtype=np.int64))
    if not tunes:
        raise UsageError(f"{path} holds no tunes (expected blocks of M:, K: and token lines)")
    return tunes


def split_by_hash(tunes: list[np.ndarray], valid_fraction: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The ``round(fraction * n)`` tunes with the smallest content hashes go to valid: the split
    depends on the tunes only, not on file order or a seed."""
    if not 0 <= valid_fraction < 1:
        raise UsageError(f"{setting('valid_fraction')} must be in [0, 1), got {valid_fraction}")
    n_valid = int(round(valid_fraction * len(tunes)))
    if valid_fraction > 0 and len(tunes) > 1:
        n_valid = max(1, n_valid)
    keys = [hashlib.sha1(np.asarray(t, dtype=np.int16).tobytes()).hexdigest() for t in tunes]
    order = sorted(range(len(tunes)), key=lambda k: (keys[k], k))
    valid_set = set(order[:n_valid])
    train = [t for k, t in enumerate(tunes) if k not in valid_set]
    valid = [t for k, t in enumerate(tunes) if k in valid_set]
    return train, valid


def epoch_batches(lengths: list[int] | np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Indices of each batch of an epoch: tunes sorted by length (ties in random order), cut
    into batches of ``batch_size``, the batches shuffled. Deterministic in (seed, epoch)."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    tie_break = rng.permutation(len(lengths))
    order = np.lexsort((tie_break, lengths))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def sorted_batches(lengths: list[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of similar length in a fixed order (validation)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def make_batch(tunes: list[np.ndarray], indices) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``<s> tune`` and targets ``tune </s>``, (B, T) int64, right-padded. Padded inputs
    are END_ID (any id would do: they only feed positions whose targets are IGNORE)."""
    chosen = [tunes[k] for k in indices]
    width = max(len(t) for t in chosen) + 1
    inputs = np.full((len(chosen), width), END_ID, dtype=np.int64)
    targets = np.full((len(chosen), width), IGNORE, dtype=np.int64)
    for row, tune in enumerate(chosen):
        n = len(tune)
        inputs[row, 0] = START_ID
        inputs[row, 1 : n + 1] = tune
        targets[row, :n] = tune
        targets[row, n] = END_ID
    return inputs, targets
