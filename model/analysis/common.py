"""What every part of the analysis shares: settings, the numbers table, report sections, token
order for plots, and generating + validating tunes with the batched sampler."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from folkrnn.schemas.vocab import DURATIONS, TOKEN_CLASSES, TOKENS

PARTS: tuple[str, ...] = ("parameters", "tokens", "activations", "counting", "nudging", "copying")
BAR_REASONS = frozenset({"bar_too_long", "bar_too_short"})


@dataclass
class AnalysisSettings:
    """Sizes of the analysis; the defaults are for a v2-size model (see benchmarks/bench_analyze.py)."""

    num_tunes: int = 500  # generated tunes per setting (baseline, each ablation k, each nudge)
    seed: int = 0  # every setting samples the same tune numbers with the same seed: paired comparisons
    temperature: float = 1.0
    max_tokens: int = 1000
    # Small batches keep the tail of continuous batching short: at v2 size on 1 core, 500 random-weight
    # tunes took 8.4 s at batch 32, 9.3 s at 64 and 12.9 s at 128.
    batch_size: int = 32
    dtype: str = "fp32"  # or "bf16": about 2x faster on CPUs with AMX, slightly different tunes
    tune: list[str] | None = None  # the activations tune; None: the first valid generated tune
    counting_tunes: int = 100  # tunes fed to the model for the bar-probability and Fourier analyses
    ablation_ks: tuple[int, ...] = (0, 8, 32, 128)
    nudge_targets: tuple[str, ...] = ("C", "2", "K:Cmin")  # tokens or token-class names
    nudge_deltas: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    ingest: str | None = "out/ingest"  # the corpus for copying; None or missing: the part is skipped
    copy_anchor: int = 8  # token runs shorter than this count as 0 in the copying part


class Numbers:
    """The analysis' numbers in long format: (part, name, key, value) rows -> numbers.parquet."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, part: str, name: str, key, value) -> None:
        self.rows.append({"part": part, "name": name, "key": str(key), "value": float(value)})

    def get(self, part: str, name: str, key="") -> float:
        for row in self.rows:
            if row["part"] == part and row["name"] == name and row["key"] == str(key):
                return row["value"]
        raise KeyError((part, name, key))

    def select(self, part: str, name: str) -> dict[str, float]:
        return {r["key"]: r["value"] for r in self.rows if r["part"] == part and r["name"] == name}

    def write(self, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("part", pa.string()), ("name", pa.string()), ("key", pa.string()),
                            ("value", pa.float64())])
        pq.write_table(pa.Table.from_pylist(self.rows, schema=schema), path)


@dataclass
class Figure:
    file: str  # PNG inside the output folder
    caption: str  # what the plot shows, in a sentence made from the numbers


@dataclass
class Section:
    part: str
    title: str
    text: list[str] = field(default_factory=list)  # sentences before the figures
    figures: list[Figure] = field(default_factory=list)
    table: str = ""  # optional Markdown table after the figures


# --- Generation ---------------------------------------------------------------------------------
@dataclass
class Generated:
    """Tunes sampled from one model setting, with the validator's findings."""

    numbers: list[int]
    tokens: list[list[str]]
    truncated: list[bool]
    findings: list  # folkrnn.transforms.validator.Findings
    log_mass: list | None = None  # well-formed sampling: per tune, the log of the probability mass kept

    def rates(self) -> dict[str, float]:
        n = max(len(self.tokens), 1)
        return {
            "valid_rate": sum(f.valid for f in self.findings) / n,
            "bar_valid_rate": sum(bar_valid(f) for f in self.findings) / n,
            "standard_form_rate": sum(f.standard_form for f in self.findings) / n,
            "ends_on_tonic_rate": sum(f.ends_on_tonic for f in self.findings) / n,
            "mean_length": float(np.mean([len(t) for t in self.tokens])) if self.tokens else 0.0,
            "truncated_rate": sum(self.truncated) / n,
            **({"removed_per_tune": -float(np.mean(self.log_mass))} if self.log_mass else {}),
        }

    def valid_tunes(self) -> list[list[str]]:
        return [t for t, f in zip(self.tokens, self.findings) if f.valid]


def bar_valid(findings) -> bool:
    """The model counted every bar right: a meter to count against, notes, and no bar too long or
    too short (a tune without M: cannot be checked, so it does not count as right)."""
    reasons = set(findings.reasons)
    return findings.meter is not None and "empty_body" not in reasons and not BAR_REASONS & reasons


def generate(model, settings: AnalysisSettings, num_tunes: int | None = None, well_formed: bool = False) -> Generated:
    """Tunes 1..N of ``model`` with the batched sampler (``well_formed``: masked by the grammar), validated."""
    from folkrnn.model.sample import Sampler, sample_in_order
    from folkrnn.transforms.validator import validate_tokens

    numbers = list(range(1, (num_tunes or settings.num_tunes) + 1))
    sampler = Sampler(model, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[settings.dtype])
    tunes = sample_in_order(sampler, numbers, seed=settings.seed, temperature=settings.temperature,
                            max_tokens=settings.max_tokens, batch_size=min(settings.batch_size, len(numbers)),
                            well_formed=well_formed)
    tokens = [t.tokens for t in tunes]
    truncated = [t.truncated for t in tunes]
    masses = [t.constraint_log_mass for t in tunes] if well_formed else None
    return Generated(numbers, tokens, truncated, [validate_tokens(t, x) for t, x in zip(tokens, truncated)], masses)


def model_copy(model):
    """A detached copy to modify (ablation, nudging): the caller's model is never touched."""
    return copy.deepcopy(model).eval()


class Context:
    """What the parts share in one run: the model, settings, output folder, numbers, and the
    baseline tunes (generated once, used by activations, counting, nudging and copying)."""

    def __init__(self, model, settings: AnalysisSettings, out_dir: str, numbers: Numbers | None = None,
                 log: Callable[[str], None] | None = None):
        self.model = model.eval()
        self.settings = settings
        self.out_dir = out_dir
        self.numbers = numbers if numbers is not None else Numbers()
        self.log = log or (lambda message: None)
        self._baseline: Generated | None = None
        os.makedirs(out_dir, exist_ok=True)

    def baseline(self) -> Generated:
        if self._baseline is None:
            self.log(f"generating {self.settings.num_tunes} baseline tunes")
            self._baseline = generate(self.model, self.settings)
            for name, value in self._baseline.rates().items():
                self.numbers.add("baseline", name, "", value)
        return self._baseline

    def baseline_section(self) -> Section | None:
        """What the unmodified model generates, when some part generated tunes."""
        if self._baseline is None:
            return None
        r = self._baseline.rates()
        forms: dict[str, int] = {}
        for f in self._baseline.findings:
            forms[f.form or "(none)"] = forms.get(f.form or "(none)", 0) + 1
        common = ", ".join(f"{form} {pct(count / len(self._baseline.findings))}"
                           for form, count in sorted(forms.items(), key=lambda kv: -kv[1])[:4])
        return Section("baseline", "Generated tunes", text=[
            f"{len(self._baseline.tokens)} tunes generated by the unmodified model (seed {self.settings.seed}, "
            f"temperature {self.settings.temperature:g}; the same tune numbers and seed serve every setting below, so "
            f"differences come from the change to the model): {pct(r['valid_rate'])} valid, {pct(r['bar_valid_rate'])} "
            f"with every bar the right length, {pct(r['standard_form_rate'])} in AABB form with two 8-bar parts, "
            f"{pct(r['ends_on_tonic_rate'])} ending on the tonic, mean length {r['mean_length']:.0f} tokens, "
            f"{pct(r['truncated_rate'])} cut at {self.settings.max_tokens} tokens. Most common forms: {common}."])

    def savefig(self, fig, name: str) -> str:
        fig.savefig(os.path.join(self.out_dir, name), dpi=110, bbox_inches="tight")
        pyplot().close(fig)
        return name


# --- Plots and tokens ---------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend: the analysis writes files and never opens windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pitch_sort_key(token: str) -> tuple[int, int, str]:
    """Low to high; at one height flat, then natural or unmarked, then sharp."""
    from folkrnn.transforms.validator import pitch_height

    return pitch_height(token), "_=^".find(token[0]) if token[0] in "_=^" else 1, token


CLASS_ORDER = ("special", "meter", "mode", "bar", "pitch", "rest", "chord", "duration", "broken", "tuplet")


def display_order() -> list[str]:
    """All tokens grouped by class for plots: pitches low to high, durations short to long."""
    out: list[str] = []
    for name in CLASS_ORDER:
        members = TOKEN_CLASSES[name]
        if name == "pitch":
            out += sorted(members, key=pitch_sort_key)
        elif name == "duration":
            out += sorted(members, key=DURATIONS.__getitem__)
        else:
            out += sorted(members, key=TOKENS.index)
    assert sorted(out) == sorted(TOKENS)
    return out


def class_spans(order: list[str]) -> list[tuple[str, int, int]]:
    """(class, first index, last index + 1) of each class run in ``order``."""
    from folkrnn.schemas.vocab import token_class

    spans: list[tuple[str, int, int]] = []
    for i, token in enumerate(order):
        name = token_class(token)
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1], i + 1)
        else:
            spans.append((name, i, i + 1))
    return spans


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def code(token: str) -> str:
    """A token for Markdown text."""
    return f"`{token}`"


def cell(text: str) -> str:
    """Text for a Markdown table cell (a bar-line token is a pipe)."""
    return text.replace("|", "\\|")
