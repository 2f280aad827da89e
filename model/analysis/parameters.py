"""Part 1, parameters: singular value spectra of every weight matrix per layer and gate, norms per
gate, the output layer's bias per token and the correlations between its token vectors."""

from __future__ import annotations

import numpy as np
import torch

from folkrnn.model.analysis.common import Context, Figure, Section, class_spans, code, display_order, pyplot
from folkrnn.schemas.vocab import TOKEN_TO_ID, TOKENS

GATES = ("i", "f", "g", "o")  # torch order; g is the cell input (Lasagne's "c" gate)
GATE_NAMES = {"i": "input gate", "f": "forget gate", "g": "cell input", "o": "output gate"}


def weight_matrices(model) -> dict[str, np.ndarray]:
    """Every matrix by name: ``layer1.input.f`` (H x n_in), ``layer2.recurrent.o`` (H x H), ``output`` (V x H)."""
    out = {}
    for k, layer in enumerate(model.layers, 1):
        n = layer.n_units
        for kind, w in (("input", layer.weight_ih), ("recurrent", layer.weight_hh)):
            for j, gate in enumerate(GATES):
                out[f"layer{k}.{kind}.{gate}"] = w[j * n : (j + 1) * n].detach().double().numpy()
    out["output"] = model.out.weight.detach().double().numpy()
    return out


def singular_values(model) -> dict[str, np.ndarray]:
    """Singular values (descending) of every matrix of ``weight_matrices``."""
    return {name: torch.linalg.svdvals(torch.from_numpy(w)).numpy() for name, w in weight_matrices(model).items()}


def describe(name: str) -> str:
    """``layer2.recurrent.f`` -> "layer 2's recurrent weights to the forget gate"."""
    if name == "output":
        return "the output layer's weights"
    layer, kind, gate = name.split(".")
    return f"layer {layer[5:]}'s {kind} weights to the {GATE_NAMES[gate]}"


def effective_rank(sv: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values: n for a flat spectrum, 1 for rank one."""
    p = sv / sv.sum() if sv.sum() > 0 else np.ones_like(sv) / len(sv)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def gate_norms(model) -> dict[tuple[int, str, str], float]:
    """Frobenius norm per (layer, gate, kind) with kind input, recurrent or bias."""
    out = {}
    for k, layer in enumerate(model.layers, 1):
        n = layer.n_units
        for j, gate in enumerate(GATES):
            rows = slice(j * n, (j + 1) * n)
            out[k, gate, "input"] = float(layer.weight_ih.detach()[rows].norm())
            out[k, gate, "recurrent"] = float(layer.weight_hh.detach()[rows].norm())
            out[k, gate, "bias"] = float(layer.bias.detach()[rows].norm())
    return out


def mean_gate_bias(model) -> dict[tuple[int, str], float]:
    out = {}
    for k, layer in enumerate(model.layers, 1):
        n = layer.n_units
        for j, gate in enumerate(GATES):
            out[k, gate] = float(layer.bias.detach()[j * n : (j + 1) * n].mean())
    return out


def output_bias(model) -> dict[str, float]:
    """The output layer's bias per token: the model's preference before any context reaches it."""
    b = model.out.bias.detach().double().numpy()
    return {t: float(b[i]) for i, t in enumerate(TOKENS)}


def output_correlations(model, order: list[str] | None = None) -> np.ndarray:
    """Pearson correlation between the tokens' output vectors (rows of out.weight), in ``order``."""
    order = order or list(TOKENS)
    w = model.out.weight.detach().double().numpy()[[TOKEN_TO_ID[t] for t in order]]
    w = w - w.mean(1, keepdims=True)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    w = w / np.where(norms > 0, norms, 1)
    return w @ w.T


def analyze(ctx: Context) -> Section:
    model, numbers = ctx.model, ctx.numbers
    section = Section("parameters", "Parameters")
    section.text.append(f"{model.num_parameters():,} parameters (initial states excluded): "
                        f"{len(model.layers)} LSTM layers of {model.layers[0].n_units} units and a softmax "
                        f"over {len(TOKENS)} tokens.")
    # Singular values.
    spectra = singular_values(model)
    stats = {}
    for name, sv in spectra.items():
        stats[name] = (float(sv[0]), effective_rank(sv), float(np.median(sv)))
        numbers.add("parameters", "top_singular_value", name, sv[0])
        numbers.add("parameters", "effective_rank", name, stats[name][1])
        numbers.add("parameters", "frobenius_norm", name, np.sqrt((sv**2).sum()))
    steepest = max(stats, key=lambda m: stats[m][0] / max(stats[m][2], 1e-12))
    flattest = max((m for m in stats if m != "output"), key=lambda m: stats[m][1] / len(spectra[m]))
    plt = pyplot()
    n_layers = len(model.layers)
    fig, axes = plt.subplots(1, n_layers + 1, figsize=(4 * (n_layers + 1), 3.4), sharey=True)
    colors = {"i": "tab:blue", "f": "tab:orange", "g": "tab:green", "o": "tab:red"}
    for k in range(1, n_layers + 1):
        ax = axes[k - 1]
        for gate in GATES:
            for kind, style in (("input", "-"), ("recurrent", "--")):
                ax.semilogy(spectra[f"layer{k}.{kind}.{gate}"], style, color=colors[gate], lw=1,
                            label=f"{gate} {kind}")
        ax.set_title(f"layer {k}")
        ax.set_xlabel("index")
    axes[0].set_ylabel("singular value")
    axes[0].legend(fontsize=6, ncol=2)
    axes[-1].semilogy(spectra["output"], color="k")
    axes[-1].set_title("output (softmax) layer")
    axes[-1].set_xlabel("index")
    top, er, med = stats[steepest]
    section.figures.append(Figure(ctx.savefig(fig, "parameters_singular_values.png"), (
        f"Singular values of every input (solid) and recurrent (dashed) matrix per gate. The steepest "
        f"spectrum is that of {describe(steepest)}: its largest singular value ({top:.2f}) is "
        f"{top / max(med, 1e-12):.1f} times its median; the flattest is that of {describe(flattest)} "
        f"(effective rank {stats[flattest][1]:.0f} of {len(spectra[flattest])}).")))

    # Norms per gate.
    norms = gate_norms(model)
    biases = mean_gate_bias(model)
    for (k, gate, kind), value in norms.items():
        numbers.add("parameters", "gate_norm", f"layer{k}.{kind}.{gate}", value)
    for (k, gate), value in biases.items():
        numbers.add("parameters", "mean_gate_bias", f"layer{k}.{gate}", value)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    width = 0.8 / n_layers
    for ax, kind in zip(axes, ("input", "recurrent", "bias")):
        for k in range(1, n_layers + 1):
            ax.bar(np.arange(4) + (k - 1) * width, [norms[k, g, kind] for g in GATES], width, label=f"layer {k}")
        ax.set_xticks(np.arange(4) + width * (n_layers - 1) / 2, [GATE_NAMES[g] for g in GATES], fontsize=8)
        ax.set_title(f"{kind} weights" if kind != "bias" else "biases")
    axes[0].set_ylabel("Frobenius norm")
    axes[0].legend(fontsize=7)
    largest = max(((k, g) for k in range(1, n_layers + 1) for g in GATES), key=lambda kg: norms[kg[0], kg[1], "recurrent"])
    forget = ", ".join(f"{biases[k, 'f']:+.2f}" for k in range(1, n_layers + 1))
    section.figures.append(Figure(ctx.savefig(fig, "parameters_gate_norms.png"), (
        f"Norms per gate and layer. The largest recurrent weights feed layer {largest[0]}'s "
        f"{GATE_NAMES[largest[1]]} ({norms[largest[0], largest[1], 'recurrent']:.1f}); the mean forget-gate "
        f"biases are {forget} (layers 1 to {n_layers}): the more positive, the longer the cells hold what they store.")))

    # Output bias per token.
    order = display_order()
    bias = output_bias(model)
    for token, value in bias.items():
        numbers.add("parameters", "output_bias", token, value)
    ranked = sorted(bias, key=bias.get, reverse=True)
    fig, ax = plt.subplots(figsize=(15, 3.2))
    ax.bar(range(len(order)), [bias[t] for t in order], color="tab:gray")
    ax.set_xticks(range(len(order)), order, rotation=90, fontsize=5)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylabel("output bias")
    _mark_classes(ax, order)
    high = ", ".join(f"{code(t)} ({bias[t]:+.2f})" for t in ranked[:3])
    low = ", ".join(f"{code(t)} ({bias[t]:+.2f})" for t in ranked[-3:])
    section.figures.append(Figure(ctx.savefig(fig, "parameters_output_bias.png"), (
        f"The output layer's bias per token, grouped by class: what the model favours before any context. "
        f"Highest: {high}; lowest: {low}.")))

    # Correlations between the tokens' output vectors.
    corr = output_correlations(model, order)
    pairs = [(corr[a, b], order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    pairs.sort(reverse=True)
    for r, a, b in pairs[:20]:
        numbers.add("parameters", "output_correlation_top", f"{a}|{b}", r)
    fig, ax = plt.subplots(figsize=(9, 8))
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(order)), order, rotation=90, fontsize=4)
    ax.set_yticks(range(len(order)), order, fontsize=4)
    _outline_classes(ax, order)
    fig.colorbar(image, ax=ax, shrink=0.7, label="correlation")
    r, a, b = pairs[0]
    section.figures.append(Figure(ctx.savefig(fig, "parameters_output_correlations.png"), (
        f"Correlations between the tokens' output vectors (the softmax layer's columns), grouped by class. "
        f"The most correlated pair is {code(a)} and {code(b)} (r = {r:.2f}): the model raises and lowers "
        f"their probabilities together; next {code(pairs[1][1])}/{code(pairs[1][2])} ({pairs[1][0]:.2f}).")))
    return section


def _mark_classes(ax, order: list[str]) -> None:
    for name, first, stop in class_spans(order):
        ax.axvline(first - 0.5, color="k", lw=0.4)
        if stop - first < 3:  # too narrow for its name
            continue
        ax.text((first + stop - 1) / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center", fontsize=7)


def _outline_classes(ax, order: list[str]) -> None:
    for _, first, _stop in class_spans(order):
        ax.axvline(first - 0.5, color="k", lw=0.3)
        ax.axhline(first - 0.5, color="k", lw=0.3)
