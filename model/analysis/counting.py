"""Part 4, counting: how the model knows where bar lines go.

* Bar probability by position: at every step where the elements so far are complete (see
  timing.py), the probability the model gives to any bar-line token, against how far into the
  bar the tune is, in eighths. A model that counts gives ~1 where the bar is full and ~0 elsewhere.
* Units that follow the bar period: each last-layer unit's activity, resampled onto musical time
  (a sixteenth grid, holding the state of the last token read), and Fourier-analysed; a unit's
  score is the share of its power within the main lobe around one cycle per bar.
* Ablation: silence the top-k such units (their h is zero for every consumer: the output layer,
  their own recurrence) and measure how the bar-valid rate of generated tunes falls as k grows,
  next to k random units as a control.
"""

from __future__ import annotations

import numpy as np
import torch

from folkrnn.model.analysis.activations import analysis_tune, encode_batch, run_states
from folkrnn.model.analysis.common import Context, Figure, Section, generate, model_copy, pct, pyplot
from folkrnn.model.analysis.timing import bar_length, timeline
from folkrnn.schemas.vocab import BAR_TOKENS, TOKEN_TO_ID

GRID = 0.5  # eighths per sample of the musical-time grid (a sixteenth)
MIN_BARS = 4  # shorter tunes have too coarse a spectrum to say anything about one cycle per bar
BAR_IDS = sorted(TOKEN_TO_ID[t] for t in BAR_TOKENS)


# --- Fourier analysis: pure functions ------------------------------------------------------------
def resample(values: np.ndarray, onsets: np.ndarray, step: float = GRID) -> np.ndarray:
    """(T, H) per-token values onto a uniform musical-time grid: each grid point holds the values
    after the last token whose onset is at or before it."""
    onsets = np.maximum.accumulate(np.asarray(onsets, dtype=float))
    grid = np.arange(0.0, onsets[-1] + 1e-9, step)
    index = np.searchsorted(onsets, grid + 1e-9, side="right") - 1
    return values[np.clip(index, 0, len(values) - 1)]


def power_spectrum(signal: np.ndarray, step: float = GRID) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in cycles per eighth, power (F, H)) of each column, mean removed, Hann window;
    the zero frequency is left out."""
    x = signal - signal.mean(0)
    x = x * np.hanning(len(x))[:, None]
    power = np.abs(np.fft.rfft(x, axis=0)) ** 2
    freqs = np.fft.rfftfreq(len(x), step)
    return freqs[1:], power[1:]


def bar_band_fraction(signal: np.ndarray, bar_length: float, step: float = GRID) -> tuple[np.ndarray, float]:
    """Per column, the share of its power within the Hann main lobe (+-2 bins) around one cycle
    per bar; and the share a flat spectrum would have there (chance)."""
    freqs, power = power_spectrum(signal, step)
    bars = len(signal) * step / bar_length
    band = np.abs(freqs * bar_length - 1.0) <= 2.0 / bars
    total = power.sum(0)
    score = np.where(total > 0, power[band].sum(0) / np.where(total > 0, total, 1), 0.0)
    return score, float(band.sum() / max(len(freqs), 1))


def spectrum_per_bar(signal: np.ndarray, bar_length: float, grid: np.ndarray, step: float = GRID) -> np.ndarray:
    """(H, G) normalised power of each column at ``grid`` frequencies in cycles per bar."""
    freqs, power = power_spectrum(signal, step)
    power = power / np.maximum(power.sum(0), 1e-30)
    cycles = freqs * bar_length
    return np.stack([np.interp(grid, cycles, power[:, u]) for u in range(power.shape[1])])


# --- Running the model over tunes ----------------------------------------------------------------
def read_tunes(model, tunes: list[list[str]], batch: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each tune, (last-layer h (T, H), P(bar line next) (T,)) after reading each of ``<s> + tokens``."""
    out: list = [None] * len(tunes)
    order = sorted(range(len(tunes)), key=lambda i: len(tunes[i]))  # similar lengths: little padding
    last = len(model.layers) - 1
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        ids, lengths = encode_batch([tunes[i] for i in chunk])
        hs, _, logits = run_states(model.eval(), ids, keep_layers=[last], keep_cells=False)
        p_bar = torch.softmax(logits.float(), -1)[..., BAR_IDS].sum(-1)
        for row, i in enumerate(chunk):
            out[i] = (hs[last][row, : lengths[row]].float().numpy(), p_bar[row, : lengths[row]].numpy())
    return out


def bar_probability_rows(tunes: list[list[str]], p_bars: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Boundary steps of every tune: meter, position in the bar (eighths), P(bar line) the model
    gave there, and whether a bar line came. Steps right after a bar line are left out (a second
    bar token such as ``:| |:`` may follow there at position 0)."""
    rows: dict[str, list] = {"tune": [], "meter": [], "position": [], "p_bar": [], "is_bar": []}
    for n, (tokens, p_bar) in enumerate(zip(tunes, p_bars)):
        line = timeline(tokens)
        for j, token in enumerate(tokens):
            if not line.boundary[j] or (j and tokens[j - 1] in BAR_TOKENS):
                continue
            rows["tune"].append(n)
            rows["meter"].append(line.meter or "?")
            rows["position"].append(float(line.position[j]))
            rows["p_bar"].append(float(p_bar[j]))  # step j read tokens[j - 1] and predicts tokens[j]
            rows["is_bar"].append(token in BAR_TOKENS)
    return {k: np.array(v) for k, v in rows.items()}


def unit_scores(tunes: list[list[str]], states: list[np.ndarray]) -> tuple[np.ndarray, float, np.ndarray, int]:
    """Bar-band fraction per last-layer unit averaged over the tunes with a meter and at least
    MIN_BARS bars; the mean chance level; the mean spectrum on a cycles-per-bar grid (H, G); the
    number of tunes used."""
    grid = np.linspace(0, 4, 257)
    scores, chances, spectra = [], [], []
    for tokens, h in zip(tunes, states):
        line = timeline(tokens)
        length = line.bar_length
        if length is None:
            continue
        onsets = np.array([0.0] + [float(x) for x in line.onset])  # step 0 read <s>
        signal = resample(h, onsets)
        if len(signal) * GRID / float(length) < MIN_BARS:
            continue
        score, chance = bar_band_fraction(signal, float(length))
        scores.append(score)
        chances.append(chance)
        spectra.append(spectrum_per_bar(signal, float(length), grid))
    if not scores:
        n_units = states[0].shape[1] if states else 0
        return np.zeros(n_units), float("nan"), np.zeros((n_units, len(grid))), 0
    return np.mean(scores, 0), float(np.mean(chances)), np.mean(spectra, 0), len(scores)


# --- Ablation ------------------------------------------------------------------------------------
@torch.no_grad()
def silence(model, layer: int, units) -> torch.nn.Module:
    """A copy of ``model`` in which the given units of ``layer`` (0-based) output h = 0 to every
    consumer: their columns in the layer's recurrent weights and in the next layer's input weights
    (or the output layer's) are zeroed, and their initial h is 0."""
    silenced = model_copy(model)
    units = torch.as_tensor(list(units), dtype=torch.int64)
    if len(units) == 0:
        return silenced
    target = silenced.layers[layer]
    target.weight_hh[:, units] = 0.0
    target.h0[units] = 0.0
    consumer = silenced.out.weight if layer == len(silenced.layers) - 1 else silenced.layers[layer + 1].weight_ih
    consumer[:, units] = 0.0
    return silenced


def ablation(ctx: Context, ranking: np.ndarray) -> dict[tuple[str, int], dict[str, float]]:
    """Rates of tunes generated with the top-k (and k random) last-layer units silenced, k = 0 included."""
    last = len(ctx.model.layers) - 1
    n_units = ctx.model.layers[last].n_units
    results = {}
    for k in sorted({0} | {min(k, n_units) for k in ctx.settings.ablation_ks}):  # 0: the baseline, free
        if k == 0:
            results["top", 0] = results["random", 0] = ctx.baseline().rates()
            continue
        rng = np.random.default_rng(ctx.settings.seed + k)
        others = ranking[k:] if k < n_units else ranking
        for kind, units in (("top", ranking[:k]), ("random", rng.choice(others, size=min(k, len(others)),
                                                                          replace=False))):
            ctx.log(f"ablation: {kind} {k} units")
            results[kind, k] = generate(silence(ctx.model, last, units), ctx.settings).rates()
    return results


# --- The part ------------------------------------------------------------------------------------
def counting_tunes(ctx: Context) -> tuple[list[list[str]], str]:
    """The analysis tune, then valid generated tunes (up to ``counting_tunes`` in all)."""
    first, origin = analysis_tune(ctx)
    others = [t for t in ctx.baseline().valid_tunes() if t != first]
    return [first] + others[: max(ctx.settings.counting_tunes - 1, 0)], origin


def analyze(ctx: Context) -> Section:
    numbers = ctx.numbers
    section = Section("counting", "Counting")
    tunes, origin = counting_tunes(ctx)
    read = read_tunes(ctx.model, tunes)
    states = [h for h, _ in read]
    rows = bar_probability_rows(tunes, [p for _, p in read])
    section.text.append(f"The model reads {len(tunes)} tunes: {origin} and {len(tunes) - 1} valid generated tunes.")
    plt = pyplot()

    # Bar probability against position.
    is_bar = rows["is_bar"].astype(bool)
    at_bar = float(rows["p_bar"][is_bar].mean()) if is_bar.any() else float("nan")
    elsewhere = float(rows["p_bar"][~is_bar].mean()) if (~is_bar).any() else float("nan")
    accuracy = float(((rows["p_bar"] > 0.5) == is_bar).mean()) if len(is_bar) else float("nan")
    numbers.add("counting", "p_bar_where_bar_line", "", at_bar)
    numbers.add("counting", "p_bar_elsewhere", "", elsewhere)
    numbers.add("counting", "bar_decision_accuracy", "", accuracy)
    meters = [m for m, _ in sorted(_counts(rows["meter"]).items(), key=lambda kv: -kv[1])][:4]
    for meter in sorted(set(rows["meter"].tolist())):
        for position in sorted(set(rows["position"][rows["meter"] == meter].tolist())):
            sel = (rows["meter"] == meter) & (rows["position"] == position)
            numbers.add("counting", "mean_p_bar", f"{meter}@{position:g}", rows["p_bar"][sel].mean())
            numbers.add("counting", "steps", f"{meter}@{position:g}", sel.sum())
    fig, axes = plt.subplots(1, max(len(meters), 1), figsize=(4.2 * max(len(meters), 1), 3.3), squeeze=False)
    for ax, meter in zip(axes[0], meters):
        sel = rows["meter"] == meter
        jitter = np.random.default_rng(0).uniform(-0.08, 0.08, sel.sum())
        for flag, color, label in ((False, "tab:blue", "a note followed"), (True, "tab:red", "a bar line followed")):
            part = sel & (is_bar == flag)
            ax.scatter(rows["position"][part] + jitter[is_bar[sel] == flag], rows["p_bar"][part], s=4, alpha=0.25,
                       color=color, label=label)
        positions = sorted(set(rows["position"][sel].tolist()))
        ax.plot(positions, [rows["p_bar"][sel & (rows["position"] == p)].mean() for p in positions], "k-", lw=1,
                label="mean")
        full = bar_length(meter) if meter != "?" else None
        if full is not None:
            ax.axvline(float(full), color="k", ls=":", lw=1)
        ax.set_title(f"M:{meter}")
        ax.set_xlabel("position in the bar (eighths)")
    axes[0, 0].set_ylabel("P(bar line next)")
    axes[0, 0].legend(fontsize=7, markerscale=3)
    section.figures.append(Figure(ctx.savefig(fig, "counting_bar_probability.png"), (
        f"The probability of a bar line at each point where one could go, against the position in the bar "
        f"(dotted: a full bar). Where a bar line did follow the model gave it {at_bar:.2f} on average, elsewhere "
        f"{elsewhere:.2f}; thresholding at 0.5 decides {pct(accuracy)} of {len(is_bar)} steps right.")))

    # Units that follow the bar period.
    scores, chance, spectra, used = unit_scores(tunes, states)
    ranking = np.argsort(-scores, kind="stable")
    for unit, score in enumerate(scores):
        numbers.add("counting", "bar_band_fraction", unit, score)
    for rank, unit in enumerate(ranking[:16]):
        numbers.add("counting", "top_unit", rank + 1, unit)
    numbers.add("counting", "bar_band_chance", "", chance)
    numbers.add("counting", "fourier_tunes", "", used)
    layer = len(ctx.model.layers)
    if used:
        grid = np.linspace(0, 4, spectra.shape[1])
        fig, ax = plt.subplots(figsize=(7, 3.3))
        for unit in ranking[:3]:
            ax.plot(grid, spectra[unit], lw=1, label=f"unit {unit} ({pct(scores[unit])} in band)")
        ax.plot(grid, np.median(spectra, 0), "k--", lw=1, label="median unit")
        for harmonic in (1, 2, 3):
            ax.axvline(harmonic, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("frequency (cycles per bar)")
        ax.set_ylabel("share of power")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        top = ranking[0]
        typical = next((float(bar_length(m)) for m in meters if m != "?"), 8.0)
        section.figures.append(Figure(ctx.savefig(fig, "counting_spectra.png"), (
            f"Mean power spectra of layer {layer}'s units on a musical-time axis, over {used} tunes. Unit {top} "
            f"follows the bar period most closely: {pct(scores[top])} of its power lies around one cycle per bar "
            f"(1/{typical:g} cycles per eighth in M:{meters[0] if meters else '?'}), {scores[top] / chance:.0f} times "
            f"a flat spectrum's share; the top 8 units average {pct(scores[ranking[:8]].mean())}, the median unit "
            f"{pct(float(np.median(scores)))}.")))
        h0 = states[0]
        bar_steps = [t + 1 for t, token in enumerate(tunes[0]) if token in BAR_TOKENS]
        fig, axes = plt.subplots(4, 1, figsize=(min(4 + len(h0) * 0.05, 22), 5.5), sharex=True)
        for ax, unit in zip(axes, ranking[:4]):
            ax.plot(h0[:, unit], lw=1)
            for step in bar_steps:
                ax.axvline(step, color="gray", lw=0.5)
            ax.set_ylabel(f"unit {unit}", fontsize=8)
        axes[-1].set_xlabel("step (token read); grey: bar lines")
        section.figures.append(Figure(ctx.savefig(fig, "counting_units.png"), (
            f"The four units of layer {layer} that follow the bar period most closely, while the model reads "
            f"{origin}; grey lines mark the bar lines.")))
    else:
        section.text.append("No tune had a meter and at least four bars, so no unit could be ranked by the bar "
                            "period; the ablation below silences units in index order.")
        ranking = np.arange(len(scores))

    # Ablation.
    results = ablation(ctx, ranking)
    ks = sorted({k for _, k in results})
    for (kind, k), rates in results.items():
        for name, value in rates.items():
            numbers.add("counting", f"ablation_{name}", f"{kind}:{k}", value)
    fig, ax = plt.subplots(figsize=(6, 3.3))
    xs = np.arange(len(ks))
    for kind, color in (("top", "tab:red"), ("random", "tab:gray")):
        ax.plot(xs, [results[kind, k]["bar_valid_rate"] for k in ks], "o-", color=color,
                label=f"bar-valid, {kind} units silenced")
        ax.plot(xs, [results[kind, k]["valid_rate"] for k in ks], "o--", color=color, alpha=0.6,
                label=f"valid, {kind} units silenced")
    ax.set_xticks(xs, [str(k) for k in ks])
    ax.set_xlabel(f"units of layer {layer} silenced (k)")
    ax.set_ylabel(f"share of {ctx.settings.num_tunes} tunes")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    big = ks[-1]
    base = results["top", 0]
    if big:
        caption = (f"Silencing the units that follow the bar period: the bar-valid rate (no bar too long or too "
                   f"short) goes from {pct(base['bar_valid_rate'])} to {pct(results['top', big]['bar_valid_rate'])} "
                   f"with the top {big} silenced, and to {pct(results['random', big]['bar_valid_rate'])} with {big} "
                   f"random units silenced.")
    else:
        caption = f"No units were silenced (--ablation-ks 0): the bar-valid rate is {pct(base['bar_valid_rate'])}."
    section.figures.append(Figure(ctx.savefig(fig, "counting_ablation.png"), caption))
    return section


def _counts(values: np.ndarray) -> dict[str, int]:
    keys, counts = np.unique(values, return_counts=True)
    return {str(k): int(c) for k, c in zip(keys, counts)}
