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
