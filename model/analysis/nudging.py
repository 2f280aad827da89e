"""Part 5, nudging: add a constant to the output bias of a class of tokens (a pitch, a duration, a
mode, or a whole class such as ``bar``) and measure how the generated tunes change with its size:
the valid rate, the bar-valid rate, the AABB 8+8 rate, the lengths, and how often the nudged
tokens appear (which shows the nudge took hold).

Each setting is sampled twice: plainly, and well-formed (the grammar of model/grammar.py masks every
draw). A nudge that breaks the plain sampler's counting leaves the well-formed one valid; what the
grammar then had to remove (nats a tune) shows how hard the nudge pulled against the rules."""

from __future__ import annotations

import torch

from folkrnn.model.analysis.common import (
    Context,
    Figure,
    Generated,
    Section,
    cell,
    code,
    generate,
    model_copy,
    pct,
    pyplot,
)
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.vocab import TOKEN_CLASSES, TOKEN_TO_ID

METRICS = ("valid_rate", "bar_valid_rate", "standard_form_rate", "mean_length", "target_share")
LABELS = {"valid_rate": "valid", "bar_valid_rate": "bar-valid", "standard_form_rate": "AABB, 8 + 8",
          "mean_length": "mean length (tokens)", "target_share": "share of tokens nudged"}


def resolve_target(spec: str) -> list[str]:
    """A nudge target: one vocabulary token (``C``, ``2``, ``K:Cmin``) or a class name (``bar``,
    ``duration``, ``pitch``, ...: every token of that class)."""
    if spec in TOKEN_TO_ID:
        return [spec]
    if spec in TOKEN_CLASSES:
        return sorted(TOKEN_CLASSES[spec], key=TOKEN_TO_ID.get)
    raise UsageError(f"cannot nudge {spec!r}: give a token of the vocabulary (e.g. C, ^f, 2, K:Cmin) or a class "
                     f"({', '.join(TOKEN_CLASSES)})")


@torch.no_grad()
def nudge(model, tokens: list[str], delta: float) -> torch.nn.Module:
    """A copy of ``model`` whose output bias is raised by ``delta`` for ``tokens``: their logits,
    hence their odds against every other token, are multiplied by exp(delta) at every step."""
    nudged = model_copy(model)
    nudged.out.bias[[TOKEN_TO_ID[t] for t in tokens]] += delta
    return nudged


def target_share(generated: Generated, tokens: list[str]) -> float:
    """Share of all generated tokens that are among ``tokens``."""
    members = set(tokens)
    total = sum(len(t) for t in generated.tokens)
    return sum(x in members for t in generated.tokens for x in t) / total if total else 0.0


SAMPLERS = ("plain", "well-formed")


def sweep(ctx: Context, spec: str) -> dict[str, dict[float, dict[str, float]]]:
    """Rates of generated tunes for every delta of the settings, for one target, per sampler."""
    tokens = resolve_target(spec)
    out: dict[str, dict[float, dict[str, float]]] = {name: {} for name in SAMPLERS}
    for delta in sorted(set(ctx.settings.nudge_deltas) | {0.0}):
        ctx.log(f"nudging {spec} by {delta:+g}")
        model = ctx.model if delta == 0 else nudge(ctx.model, tokens, delta)
        for name in SAMPLERS:
            if name == "plain" and delta == 0:
                generated = ctx.baseline()
            else:
                generated = generate(model, ctx.settings, well_formed=name == "well-formed")
            out[name][delta] = {**generated.rates(), "target_share": target_share(generated, tokens)}
    return out


def analyze(ctx: Context) -> Section:
    numbers = ctx.numbers
    section = Section("nudging", "Nudging")
    targets = list(ctx.settings.nudge_targets)
    for spec in targets:
        resolve_target(spec)  # refuse a bad target before any generation
    both = {spec: sweep(ctx, spec) for spec in targets}
    results = {spec: by_sampler["plain"] for spec, by_sampler in both.items()}
    formed = {spec: by_sampler["well-formed"] for spec, by_sampler in both.items()}
    for spec in targets:
        for sampler, by_delta in both[spec].items():
            suffix = "" if sampler == "plain" else "@well-formed"
            for delta, rates in by_delta.items():
                for name, value in rates.items():
                    numbers.add("nudging", name, f"{spec}@{delta:+g}{suffix}", value)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.6 * len(METRICS), 3.2))
    for ax, metric in zip(axes, METRICS):
        for k, spec in enumerate(targets):
            deltas = sorted(results[spec])
            color = f"C{k}"
            ax.plot(deltas, [results[spec][d][metric] for d in deltas], "o-", color=color, label=spec)
            ax.plot(deltas, [formed[spec][d][metric] for d in deltas], "s--", color=color, alpha=0.7,
                    label=f"{spec}, well-formed")
        ax.set_title(LABELS[metric], fontsize=9)
        ax.set_xlabel("bias added")
        if metric != "mean_length":
            ax.set_ylim(0, 1 if metric != "target_share" else None)
    axes[0].legend(fontsize=7, title="nudged", title_fontsize=7)
    sentences = []
    for spec in targets:
        by_delta = results[spec]
        high = max(by_delta)
        base = by_delta[0.0]
        top = by_delta[high]
        kept = formed[spec][high]
        sentences.append(f"nudging {code(spec)} by {high:+g} takes its share of tokens from {pct(base['target_share'])} "
                         f"to {pct(top['target_share'])}, the valid rate from {pct(base['valid_rate'])} to "
                         f"{pct(top['valid_rate'])} and the mean length from {base['mean_length']:.0f} to "
                         f"{top['mean_length']:.0f} tokens, while the well-formed sampler stays "
                         f"{pct(kept['valid_rate'])} valid with the nudged tokens at {pct(kept['target_share'])}, "
                         f"the grammar removing {kept['removed_per_tune']:.1f} nats a tune")
    section.figures.append(Figure(ctx.savefig(fig, "nudging.png"), (
        f"What {ctx.settings.num_tunes} generated tunes per setting do when the output bias of one token (or class) "
        f"is raised or lowered (solid: plain sampling; dashed: well-formed): " + "; ".join(sentences) + ".")))
    rows = ["| nudged | bias | sampler | valid | bar-valid | AABB 8+8 | mean length | truncated | share nudged "
            "| removed a tune |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for spec in targets:
        for delta in sorted(results[spec]):
            for sampler, r in (("plain", results[spec][delta]), ("well-formed", formed[spec][delta])):
                removed = f"{r['removed_per_tune']:.2f} nats" if "removed_per_tune" in r else "-"
                rows.append(f"| {cell(code(spec))} | {delta:+g} | {sampler} | {pct(r['valid_rate'])} | "
                            f"{pct(r['bar_valid_rate'])} | {pct(r['standard_form_rate'])} | {r['mean_length']:.0f} | "
                            f"{pct(r['truncated_rate'])} | {100 * r['target_share']:.1f}% | {removed} |")
    section.table = "\n".join(rows)
    return section
