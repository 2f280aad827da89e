"""The tune validator as a Beam transform.

The validator itself is pure and lives in ``folkrnn.transforms.validator``; ``ValidateTunes``
validates each row of a PCollection with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from folkrnn.transforms.validator import BEAM_COLUMNS, Findings, validate_tokens


class ValidateTunes(beam.PTransform):
    """Validate each tune of a PCollection of rows.

    In: dict rows with ``tokens`` (a list of token strings, ``M:.. K:.. body``, with or without
    ``<s>``/``</s>``) and an optional ``truncated`` bool (True for generated tunes that hit
    their length limit). Other keys pass through untouched.

    Out: the same rows (copies) with the findings columns added: valid, reasons, bar_count,
    bar_lengths_failed, sections, form, standard_form, ends_on_tonic, pickup (``columns``
    chooses others among the ``Findings`` fields, e.g. add ``problems``).

    Metrics (namespace ``validate``): counters ``valid`` and ``invalid``, and one counter per
    reason code counting the tunes with that reason.
    """

    def __init__(self, columns: Sequence[str] = BEAM_COLUMNS, label: str | None = None):
        super().__init__(label)
        unknown = set(columns) - set(Findings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"not Findings fields: {sorted(unknown)}")
        self.columns = tuple(columns)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "ValidateTokens" >> beam.ParDo(_ValidateFn(self.columns))


class _ValidateFn(beam.DoFn):
    def __init__(self, columns: tuple[str, ...]):
        self.columns = columns
        self.counters: dict[str, Any] = {}

    def counter(self, name: str) -> Any:
        if name not in self.counters:
            self.counters[name] = Metrics.counter("validate", name)
        return self.counters[name]

    def process(self, row: dict):
        findings = validate_tokens(row.get("tokens"), bool(row.get("truncated")))
        self.counter("valid" if findings.valid else "invalid").inc()
        for code in findings.reasons:
            self.counter(code).inc()
        values = findings.as_row()
        out = dict(row)
        for column in self.columns:
            out[column] = values[column]
        yield out


# -- whole shards: ``folkrnn validate --runner`` ------------------------------------------------

class _ValidateShardFn(beam.DoFn):
    """One shard: read it, validate every tune, rewrite it atomically (the local path's own code)."""

    def __init__(self, write: bool):
        self.write = write
        self.shards = Metrics.counter("validate", "shards")
        self.tunes = Metrics.counter("validate", "tunes")
        self.failed = Metrics.counter("validate", "shards_failed")

    def process(self, shard: tuple[int, str]):
        from folkrnn.pipeline.validate import validate_shard
        from folkrnn.schemas.errors import UsageError, describe_os_error

        index, path = shard
        try:
            rows, tally = validate_shard(path, write=self.write)
        except UsageError as err:  # a shard the user must fix: reported, the other shards still done
            self.failed.inc()
            yield index, 0, None, str(err)
            return
        except OSError as err:
            self.failed.inc()
            yield index, 0, None, describe_os_error(err)
            return
        self.shards.inc()
        self.tunes.inc(rows)
        yield index, rows, tally, None


def summarize_shards(results: list, shards: int) -> dict:
    """The shards' tallies merged in shard order (as the local path merges them, so the summary's
    ties fall the same way); a missing or doubled shard is an error, never a short count."""
    from folkrnn.transforms.validator import SummaryTally

    results = sorted(results, key=lambda result: result[0])
    if [result[0] for result in results] != list(range(shards)):
        raise RuntimeError(f"validate: {shards} shards in, results for {len(results)} "
                           f"({[result[0] for result in results][:20]}...): nothing summarised")
    tally, rows, errors = SummaryTally(), 0, []
    for _, n, shard_tally, error in results:
        if error is not None:
            errors.append(error)
            continue
        rows += n
        tally.merge(shard_tally)
    return {"rows": rows, "errors": errors, **tally.summary()}


class ValidateShards(beam.PTransform):
    """(index, path) of every shard of a dataset -> one summary, written as JSON to ``summary_path``.

    One element per shard, the unit of atomicity: a worker reads the whole shard, validates it and
    (``write``) rewrites it under a temporary name then renames it (``folkrnn.schemas.files``), on
    any Beam filesystem. The summary is ``summarize_shards``'s: rows, the shards that could not be
    validated (``errors``, a line each) and the validator's summary, the same as the local path's.
    """

    def __init__(self, write: bool, summary_path: str, shards: int):
        super().__init__()
        self.write, self.summary_path, self.shards = write, summary_path, shards

    def expand(self, shards: beam.PCollection) -> beam.PCollection:
        from folkrnn.schemas import files

        summary_path, count = self.summary_path, self.shards
        return (
            shards
            | "SpreadShards" >> beam.Reshuffle()  # else Dataflow fuses Create with the work on one worker
            | "ValidateShard" >> beam.ParDo(_ValidateShardFn(self.write))
            | "AllShards" >> beam.combiners.ToList()
            | "Summarize" >> beam.Map(summarize_shards, count)
            | "WriteSummary" >> beam.Map(lambda summary: files.write_json(summary_path, summary))
        )
