"""Well-formed sampling (issue 15): what the grammar guarantees, what it changes, what it costs.

1. The demo model at T=1, seed 0, 3,000 tunes, unconstrained and ``well_formed``: valid rates, the
   two corpora compared (lengths, meters, modes, forms, pitches, durations: ``folkrnn compare``'s
   table and plot), and the probability mass the grammar removed.
2. ``form=AABB`` with 8 bars a part: the share of tunes the validator finds AABB with two 8-bar parts.
3. Throughput at batch 1024, fp32: unconstrained and ``well_formed`` side by side in one run, for a
   v2-size model (random weights, tunes that never end by themselves: the steady state) and for the
   demo model (its own tune lengths, continuous batching: while every slot is busy, and the whole
   run). Target: well-formed keeps >= 85%.
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.bench_sample import v2_model
from folkrnn.model.generate import load_sampler
from folkrnn.model.grammar import Form
from folkrnn.model.sample import Sampler
from folkrnn.pipeline.compare import DatasetStats, format_comparison, plot_comparison
from folkrnn.transforms.validator import validate_tokens

DEMO = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model", "demo.pt")
PLOT = os.path.join(os.path.dirname(__file__), "well_formed_compare.png")
TUNES = 3000


def corpus(sampler: Sampler, name: str, **kwargs) -> tuple[DatasetStats, list[float], float]:
    """3,000 tunes' statistics, their removed log masses, and the tokens/s of the run."""
    stats = DatasetStats(name)
    masses = []
    tokens = 0
    start = time.perf_counter()
    for tune in sampler.sample(range(1, TUNES + 1), seed=0, temperature=1.0, batch_size=1024, **kwargs):
        findings = validate_tokens(tune.tokens, truncated=tune.truncated).as_row()
        stats.add(tune.tokens, findings)
        tokens += len(tune.token_ids) + 1
        if tune.constraint_log_mass is not None:
            masses.append(tune.constraint_log_mass)
    return stats, masses, tokens / (time.perf_counter() - start)


def rate(sampler: Sampler, well_formed: bool, tunes: int, max_tokens: int) -> float:
    """Tokens/s of sampling tunes 1..``tunes`` at batch 1024."""
    start = time.perf_counter()
    tokens = sum(len(t.token_ids) + 1 for t in sampler.sample(range(1, tunes + 1), batch_size=1024,
                                                                 max_tokens=max_tokens, well_formed=well_formed))
    return tokens / (time.perf_counter() - start)


def steady_rate(sampler: Sampler, well_formed: bool, tunes: int, max_tokens: int) -> tuple[float, float]:
    """(steady, whole) tokens/s of sampling tunes 1..``tunes`` at batch 1024: ``steady`` counts the
    tunes finished while every slot is busy (from the 512th tune done to the (tunes - 1024)th,
    after which no slot gets a new tune), ``whole`` the run to its last tune, the tail of the
    longest tunes sampled by a few slots included."""
    start = time.perf_counter()
    marks: list[tuple[float, int]] = []
    tokens = 0
    for done, tune in enumerate(sampler.sample(range(1, tunes + 1), batch_size=1024, max_tokens=max_tokens,
                                               well_formed=well_formed), start=1):
        tokens += len(tune.token_ids) + 1
        if done in (512, tunes - 1024):
            marks.append((time.perf_counter(), tokens))
    whole = tokens / (time.perf_counter() - start)
    (t0, k0), (t1, k1) = marks
    return (k1 - k0) / (t1 - t0), whole


def side_by_side(sampler: Sampler, tunes: int, max_tokens: int) -> tuple[float, float]:
    """(unconstrained, well-formed) tokens/s, alternated twice, the better of each kept."""
    rate(sampler, True, 64, 12)  # warm up
    runs = [(rate(sampler, False, tunes, max_tokens), rate(sampler, True, tunes, max_tokens)) for _ in range(2)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def steady_side_by_side(sampler: Sampler, tunes: int, max_tokens: int) -> list[tuple[float, float]]:
    """[(unconstrained, well-formed) steady tokens/s, (the same) whole-run tokens/s], alternated
    twice, the better of each kept."""
    runs = [(steady_rate(sampler, False, tunes, max_tokens), steady_rate(sampler, True, tunes, max_tokens))
            for _ in range(2)]
    return [(max(r[0][k] for r in runs), max(r[1][k] for r in runs)) for k in (0, 1)]


def run() -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    demo = load_sampler(DEMO)
    plain, _, _ = corpus(demo, "unconstrained")
    formed, masses, _ = corpus(demo, "--well-formed", well_formed=True)
    aabb, aabb_masses, _ = corpus(demo, "--form AABB", form=Form.parse("AABB", 8))
    a, b, f = plain.summary(), formed.summary(), aabb.summary()
    plot_comparison(a, b, PLOT)
    mean_mass = sum(masses) / len(masses)
    kept_per_token = torch.tensor([m / (n or 1) for m, n in zip(masses, formed.lengths)]).mean().exp().item()
    # v2 size: tunes that never end by themselves (</s> near impossible) keep every slot busy for 40 steps
    v2_plain, v2_formed = side_by_side(Sampler(v2_model(-1e4)), 1024, 40)
    (demo_plain, demo_formed), (whole_plain, whole_formed) = steady_side_by_side(demo, 8192, 1000)
    lines = [
        f"Demo model (`model/demo.pt`), T=1, seed 0, {TUNES:,} tunes each.",
        "",
        "| sampling | valid | AABB, 8 + 8 bars | mean length | removed per tune (nats) | kept a token |",
        "|---|---:|---:|---:|---:|---:|",
        f"| unconstrained | {100 * a['valid']:.1f}% | {100 * a['standard_form']:.1f}% | {a['length']['mean']:.0f} "
        "| - | - |",
        f"| `--well-formed` | {100 * b['valid']:.1f}% | {100 * b['standard_form']:.1f}% | {b['length']['mean']:.0f} "
        f"| {-mean_mass:.2f} | {100 * kept_per_token:.2f}% |",
        f"| `--form AABB --bars-per-part 8` | {100 * f['valid']:.1f}% | {100 * f['standard_form']:.1f}% "
        f"| {f['length']['mean']:.0f} | {-sum(aabb_masses) / len(aabb_masses):.2f} | - |",
        "",
        "Targets: 100.0% of `--well-formed` tunes valid; >= 99% AABB with two 8-bar parts with the form.",
        "",
        f"The two corpora side by side (`folkrnn compare`; plot: `benchmarks/{os.path.basename(PLOT)}`):",
        "",
        "```",
        format_comparison(a, b).rstrip(),
        "```",
        "",
        "Throughput at batch 1024, fp32, unconstrained and `--well-formed` alternated in one run:",
        "",
        "| model | unconstrained tokens/s | well-formed tokens/s | kept |",
        "|---|---:|---:|---:|",
        f"| v2 size, random weights (steady state) | {v2_plain:,.0f} | {v2_formed:,.0f} | "
        f"{100 * v2_formed / v2_plain:.0f}% |",
        f"| demo model, 8,192 tunes, while every slot is busy | {demo_plain:,.0f} | {demo_formed:,.0f} | "
        f"{100 * demo_formed / demo_plain:.0f}% |",
        f"| demo model, 8,192 tunes, whole run (with the tail) | {whole_plain:,.0f} | {whole_formed:,.0f} | "
        f"{100 * whole_formed / whole_plain:.0f}% |",
        "",
        "Target: well-formed keeps at least 85% of the unconstrained tokens/s (the cost of the grammar a step:",
        "v2 size and the demo model while every slot is busy). A whole run also ends with the tail of its",
        "longest tunes, sampled by a few slots; well-formed tunes are longer (see the lengths above), so",
        "its tail is longer.",
    ]
    return {"name": "Well-formed sampling (issue 15)", "markdown": "\n".join(lines)}


if __name__ == "__main__":
    print(run()["markdown"])
