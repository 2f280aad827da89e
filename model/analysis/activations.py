"""Part 3, activations: the hidden and cell states of every layer while the model reads a tune,
as heatmaps over time with the bar lines marked, and their sparsity and magnitude per layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from folkrnn.model.analysis.common import Context, Figure, Section, code, pct, pyplot
from folkrnn.schemas.vocab import BAR_TOKENS, END_ID, START, TOKEN_TO_ID

SPARSE_BELOW = 0.1  # |h| under this counts as silent

# A hand-made reel (AABB, 8 + 8 bars, 4/4, with a pickup): the activations tune when no generated
# tune is valid (an untrained model) and none was given.
FALLBACK_TUNE = (
    "M:4/4 K:Cmaj G |: c 2 e c G c e g | f e d c B G A B | c 2 e c G c e g | f d B d c 2 c G | "
    "c 2 e c G c e g | f e d c B G A B | c e g e f d B G |1 c 2 e 2 c 2 z G :| |2 c 2 e 2 c 2 z 2 |: "
    "g 2 e g f d B d | e c G c e g c' g | a f d f g e c e | f d B G A B c 2 | "
    "g 2 e g f d B d | e c G c e g c' g | a f d f g e c e | f d B d c 4 :|"
).split()


@dataclass
class Trace:
    """States of every layer after reading each token of ``<s> + tokens``."""

    tokens: list[str]  # what was read, <s> first
    h: np.ndarray  # (L, T, H)
    c: np.ndarray  # (L, T, H)
    logits: np.ndarray  # (T, V): logits[t] is the prediction after reading tokens[t]


@torch.no_grad()
def run_states(model, ids: torch.Tensor, keep_layers: list[int] | None = None, keep_cells: bool = True):
    """Run the model on ids (B, T), keeping every step's states.

    Returns (hs, cs, logits): per kept layer (B, T, H) tensors of h (and c when ``keep_cells``),
    and the logits (B, T, V). The same arithmetic as ``FolkRNN.forward`` in eval mode (a test
    checks the logits), but layer by layer with an explicit loop over time, so every cell state
    is seen.
    """
    batch, steps = ids.shape
    keep = set(range(len(model.layers))) if keep_layers is None else set(keep_layers)
    hs, cs = {}, {}
    x = None
    for k, layer in enumerate(model.layers):
        n = layer.n_units
        if k == 0:
            gx = F.embedding(ids, layer.weight_ih.t()) + layer.bias  # one-hot input: a row lookup
        else:
            gx = x @ layer.weight_ih.t() + layer.bias
        h = layer.h0.expand(batch, n)
        c = layer.c0.expand(batch, n)
        out_h = gx.new_empty(batch, steps, n)
        out_c = gx.new_empty(batch, steps, n) if keep_cells and k in keep else None
        w_t = layer.weight_hh.t()
        for t in range(steps):
            gates = torch.addmm(gx[:, t], h, w_t)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out_h[:, t] = h
            if out_c is not None:
                out_c[:, t] = c
        if k in keep:
            hs[k] = out_h
            if out_c is not None:
                cs[k] = out_c
        x = out_h
    logits = model.out(x)
    return hs, cs, logits


def encode_batch(tunes: list[list[str]]) -> tuple[torch.Tensor, list[int]]:
    """``<s> + tokens`` of each tune as ids (B, T), padded with ``</s>``; and each tune's length + 1."""
    lengths = [len(t) + 1 for t in tunes]
    ids = torch.full((len(tunes), max(lengths)), END_ID, dtype=torch.int64)
    for b, tune in enumerate(tunes):
        ids[b, : len(tune) + 1] = torch.tensor([TOKEN_TO_ID[START]] + [TOKEN_TO_ID[t] for t in tune])
    return ids, lengths


def trace_tune(model, tokens: list[str]) -> Trace:
    """All states of all layers while the model reads ``<s> + tokens``."""
    tokens = [t for t in tokens if t not in ("<s>", "</s>")]
    ids, _ = encode_batch([tokens])
    hs, cs, logits = run_states(model.eval(), ids)
    layers = range(len(model.layers))
    h = np.stack([hs[k][0].float().numpy() for k in layers])
    c = np.stack([cs[k][0].float().numpy() for k in layers])
    return Trace([START] + tokens, h, c, logits[0].float().numpy())


def sparsity(values: np.ndarray, threshold: float = SPARSE_BELOW) -> float:
    """Fraction of entries whose magnitude is below ``threshold``."""
    return float((np.abs(values) < threshold).mean())


def bar_steps(trace: Trace) -> list[int]:
    """Steps at which a bar-line token was read."""
    return [t for t, token in enumerate(trace.tokens) if token in BAR_TOKENS]


def analysis_tune(ctx: Context) -> tuple[list[str], str]:
    """The tune to look at, and where it came from."""
    if ctx.settings.tune:
        return [t for t in ctx.settings.tune if t not in ("<s>", "</s>")], "the given tune"
    baseline = ctx.baseline()
    for number, tokens, findings in zip(baseline.numbers, baseline.tokens, baseline.findings):
        if findings.valid:
            return tokens, f"generated tune {number} (the first valid one, seed {ctx.settings.seed})"
    return list(FALLBACK_TUNE), "a built-in reel (none of the generated tunes was valid)"


def analyze(ctx: Context) -> Section:
    numbers = ctx.numbers
    section = Section("activations", "Activations")
    tokens, origin = analysis_tune(ctx)
    trace = trace_tune(ctx.model, tokens)
    section.text.append(f"The model reads {origin}, {len(tokens)} tokens: {code(' '.join(tokens[:24]))} ...")
    n_layers = trace.h.shape[0]
    rows = [f"| layer | sparsity of h (share with abs < {SPARSE_BELOW}) | mean abs h | mean abs c | max abs c |", "|---|---:|---:|---:|---:|"]
    stats = {}
    for k in range(n_layers):
        stats[k] = (sparsity(trace.h[k]), float(np.abs(trace.h[k]).mean()), float(np.abs(trace.c[k]).mean()),
                    float(np.abs(trace.c[k]).max()))
        for name, value in zip(("sparsity_h", "mean_abs_h", "mean_abs_c", "max_abs_c"), stats[k]):
            numbers.add("activations", name, f"layer{k + 1}", value)
        rows.append(f"| {k + 1} | {pct(stats[k][0])} | {stats[k][1]:.3f} | {stats[k][2]:.3f} | {stats[k][3]:.2f} |")
    section.table = "\n".join(rows)
    bars = bar_steps(trace)
    numbers.add("activations", "steps", "", len(trace.tokens))
    numbers.add("activations", "bar_lines", "", len(bars))
    sparsest = max(range(n_layers), key=lambda k: stats[k][0])
    largest_c = max(range(n_layers), key=lambda k: stats[k][2])
    for kind, values, cmap in (("h", trace.h, "RdBu_r"), ("c", trace.c, "RdBu_r")):
        file = f"activations_{kind}.png"
        fig = heatmaps(values, bars, kind, cmap)
        if kind == "h":
            caption = (f"Hidden states h of each layer (units down, tokens read across; black lines: bar lines). "
                       f"Layer {sparsest + 1} is the sparsest, {pct(stats[sparsest][0])} of its values below "
                       f"{SPARSE_BELOW} in magnitude (layers: {', '.join(pct(stats[k][0]) for k in range(n_layers))}).")
        else:
            caption = (f"Cell states c. Layer {largest_c + 1}'s cells carry the largest values (mean |c| "
                       f"{stats[largest_c][2]:.2f}, max {stats[largest_c][3]:.1f}); unlike h, c is not squashed "
                       f"into [-1, 1], so long-held memories show as saturated stripes.")
        section.figures.append(Figure(ctx.savefig(fig, file), caption))
    return section


def heatmaps(values: np.ndarray, bars: list[int], kind: str, cmap: str):
    """One heatmap per layer of (L, T, H) values, bar lines as vertical lines."""
    plt = pyplot()
    n_layers, steps, _ = values.shape
    fig, axes = plt.subplots(n_layers, 1, figsize=(min(4 + steps * 0.05, 22), 2.6 * n_layers), squeeze=False)
    for k in range(n_layers):
        ax = axes[k, 0]
        limit = max(float(np.percentile(np.abs(values[k]), 99)), 1e-6)
        image = ax.imshow(values[k].T, aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        for step in bars:
            ax.axvline(step, color="k", lw=0.6)
        ax.set_ylabel(f"layer {k + 1} unit")
        fig.colorbar(image, ax=ax, pad=0.01, label=kind)
    axes[-1, 0].set_xlabel("step (token read)")
    return fig
