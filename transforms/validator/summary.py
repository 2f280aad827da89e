"""Counts over many validated tunes: valid fraction overall, by meter and by mode, reasons, forms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from folkrnn.transforms.validator.findings import REASON_DESCRIPTIONS, Findings


class SummaryTally:
    """The counts behind ``summarize``, added tune by tune; tallies of shards or workers merge."""

    def __init__(self) -> None:
        self.total = self.valid = self.standard = self.tonic = 0
        self.by_meter: dict[str, list[int]] = {}  # name -> [tunes, valid]
        self.by_mode: dict[str, list[int]] = {}
        self.reasons: Counter[str] = Counter()
        self.forms: Counter[str] = Counter()

    def add(self, f: Findings | dict) -> None:
        get = f.get if isinstance(f, dict) else lambda k, _f=f: getattr(_f, k, None)
        ok = bool(get("valid"))
        self.total += 1
        self.valid += ok
        self.standard += bool(get("standard_form"))
        self.tonic += bool(get("ends_on_tonic"))
        for table, key in ((self.by_meter, get("meter")), (self.by_mode, get("mode"))):
            counts = table.setdefault(str(key) if key is not None else "?", [0, 0])
            counts[0] += 1
            counts[1] += ok
        self.reasons.update(get("reasons") or [])
        self.forms[get("form") or ""] += 1

    def merge(self, other: SummaryTally) -> SummaryTally:
        self.total += other.total
        self.valid += other.valid
        self.standard += other.standard
        self.tonic += other.tonic
        for mine, theirs in ((self.by_meter, other.by_meter), (self.by_mode, other.by_mode)):
            for key, (n, v) in theirs.items():
                counts = mine.setdefault(key, [0, 0])
                counts[0] += n
                counts[1] += v
        self.reasons.update(other.reasons)
        self.forms.update(other.forms)
        return self

    def summary(self) -> dict:
        def fraction(n: int, d: int) -> float:
            return n / d if d else 0.0

        def breakdown(table: dict[str, list[int]]) -> dict:
            return {k: {"tunes": n, "valid": v, "valid_fraction": fraction(v, n)} for k, (n, v) in sorted(table.items())}

        return {
            "tunes": self.total,
            "valid": self.valid,
            "valid_fraction": fraction(self.valid, self.total),
            "by_meter": breakdown(self.by_meter),
            "by_mode": breakdown(self.by_mode),
            "reasons": dict(self.reasons.most_common()),  # code -> number of tunes with it
            "forms": dict(self.forms.most_common(10)),
            "standard_form_fraction": fraction(self.standard, self.total),
            "ends_on_tonic_fraction": fraction(self.tonic, self.total),
        }


def summarize(findings: Iterable[Findings | dict]) -> dict:
    """Counts over many tunes: valid fraction overall, by meter and by mode, reasons, forms.

    Takes ``Findings`` or rows (dicts with at least valid, reasons, meter, mode, form,
    standard_form and ends_on_tonic, e.g. read back from Parquet).
    """
    tally = SummaryTally()
    for f in findings:
        tally.add(f)
    return tally.summary()


def format_summary(summary: dict) -> str:
    """The summary of ``summarize`` as text for a terminal."""
    lines = [
        f"tunes: {summary['tunes']}   valid: {summary['valid']} ({summary['valid_fraction']:.1%})",
        f"standard AABB 8+8: {summary['standard_form_fraction']:.1%}   "
        f"ends on the tonic: {summary['ends_on_tonic_fraction']:.1%}",
    ]
    for title, key in (("by meter", "by_meter"), ("by mode", "by_mode")):
        lines.append(f"{title}:")
        for name, row in summary[key].items():
            lines.append(f"  {name:<6} {row['valid']:>8} / {row['tunes']:<8} valid ({row['valid_fraction']:.1%})")
    if summary["reasons"]:
        lines.append("reasons (tunes):")
        for code, n in summary["reasons"].items():
            lines.append(f"  {code:<22} {n:>8}  {REASON_DESCRIPTIONS.get(code, '')}")
    if summary["forms"]:
        lines.append("most common forms:")
        for form, n in summary["forms"].items():
            lines.append(f"  {form or '(none)':<22} {n:>8}")
    return "\n".join(lines)

