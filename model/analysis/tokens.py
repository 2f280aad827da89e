"""Part 2, token relationships: how alike the model treats tokens in its input space (layer 1's
input columns) and output space (the softmax layer's token vectors), where enharmonic pairs rank
among each other's nearest neighbours, and a 2-D map of the pitch tokens.

Both spaces are centred (the mean token vector removed) before comparing. That is not cosmetic:
exactly one input is on at a time, so a vector added to every input column is the same as a
change of layer 1's bias, and a vector added to every output row shifts every logit by the same
amount, which the softmax ignores. The mean is therefore not a property of any token.
"""

from __future__ import annotations

import numpy as np

from folkrnn.model.analysis.common import (
    Context,
    Figure,
    Section,
    class_spans,
    code,
    display_order,
    pitch_sort_key,
    pyplot,
)
from folkrnn.schemas.music import PITCH_ALTERATION, PITCH_LETTER, sounding_pitch
from folkrnn.schemas.vocab import PITCH_TOKENS, TOKEN_TO_ID, TOKENS


def enharmonic_pairs(unmarked_in_c_major: bool = False) -> list[tuple[str, str]]:
    """Pairs of distinct pitch tokens that sound the same, from pitch arithmetic on the vocabulary.

    A token without accidental takes the key signature of its tune's mode (``B`` is B flat under
    K:Cmin, K:Cdor and K:Cmix), so its pitch is unknown from the token alone: by default only
    tokens with an explicit ``^``, ``_`` or ``=`` are paired (``=B``/``_c``, ``^F``/``_G``). With
    ``unmarked_in_c_major`` unmarked tokens are read as in C major (no signature), which adds the
    pairs that hold in major tunes only, such as ``B``/``_c``. Pairs are spelled with different
    letters (``B`` and ``=B`` are one spelling, not enharmonics).
    """
    signature = {} if unmarked_in_c_major else None
    by_pitch: dict[int, list[str]] = {}
    for token in sorted(PITCH_TOKENS, key=TOKENS.index):
        height = sounding_pitch(token, signature)
        if height is not None:
            by_pitch.setdefault(height, []).append(token)
    pairs = []
    for group in by_pitch.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                x, y = group[a], group[b]
                marked = PITCH_ALTERATION[x] is not None and PITCH_ALTERATION[y] is not None
                if PITCH_LETTER[x] != PITCH_LETTER[y] and not (unmarked_in_c_major and marked):
                    pairs.append((x, y))
    return sorted(pairs, key=lambda p: (pitch_sort_key(p[0]), p))


def input_vectors(model) -> np.ndarray:
    """(V x 4H): token t's input to layer 1's gates, ``weight_ih[:, t]``, centred over tokens."""
    w = model.layers[0].weight_ih.detach().double().numpy().T
    return w - w.mean(0)


def output_vectors(model) -> np.ndarray:
    """(V x H): token t's row of the softmax layer, centred over tokens."""
    w = model.out.weight.detach().double().numpy()
    return w - w.mean(0)


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1)
    return unit @ unit.T


def neighbour_rank(similarity: np.ndarray, a: int, b: int) -> int:
    """Rank of token b among token a's neighbours (1: the nearest), a itself left out; ties rank
    in b's favour only if strictly nothing is more similar."""
    row = similarity[a]
    others = np.delete(np.arange(len(row)), a)
    return 1 + int((row[others] > row[b]).sum())


def pitch_map(vectors: np.ndarray, tokens: list[str]) -> np.ndarray:
    """(n x 2) coordinates of ``tokens`` on the first two principal components of their vectors."""
    x = vectors[[TOKEN_TO_ID[t] for t in tokens]]
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :2] * s[:2]


def analyze(ctx: Context) -> Section:
    model, numbers = ctx.model, ctx.numbers
    section = Section("tokens", "Token relationships")
    spaces = {"input": cosine_similarity(input_vectors(model)), "output": cosine_similarity(output_vectors(model))}
    chance = len(TOKENS) / 2
    sets = {"explicit": enharmonic_pairs(), "c_major": enharmonic_pairs(unmarked_in_c_major=True)}
    ranks: dict[tuple[str, str, str, str], int] = {}
    for set_name, pairs in sets.items():
        for a, b in pairs:
            for space, sim in spaces.items():
                ia, ib = TOKEN_TO_ID[a], TOKEN_TO_ID[b]
                ranks[set_name, space, a, b] = neighbour_rank(sim, ia, ib)
                ranks[set_name, space, b, a] = neighbour_rank(sim, ib, ia)
                numbers.add("tokens", f"enharmonic_rank_{space}", f"{a}->{b}", ranks[set_name, space, a, b])
                numbers.add("tokens", f"enharmonic_rank_{space}", f"{b}->{a}", ranks[set_name, space, b, a])
    medians = {}
    for set_name in sets:
        for space in spaces:
            values = [r for (s, sp, _, _), r in ranks.items() if s == set_name and sp == space]
            medians[set_name, space] = float(np.median(values)) if values else float("nan")
            numbers.add("tokens", "enharmonic_median_rank", f"{set_name}.{space}", medians[set_name, space])
    numbers.add("tokens", "neighbour_rank_chance", "", chance)
    explicit = sets["explicit"]
    section.text.append(
        f"Enharmonic pairs come from pitch arithmetic on the vocabulary: {len(explicit)} pairs of tokens with "
        f"explicit accidentals (e.g. {', '.join(f'{code(a)}/{code(b)}' for a, b in explicit[:3])}); tokens "
        f"without accidental depend on the mode's key signature, so they are paired only in a second, "
        f"C-major reading ({len(sets['c_major'])} more pairs such as {code(sets['c_major'][0][0])}/"
        f"{code(sets['c_major'][0][1])}). A rank is the place of one token among the other's "
        f"{len(TOKENS) - 1} neighbours by cosine similarity (1 = nearest; chance about {chance:.0f}).")

    # Similarity matrices.
    plt = pyplot()
    order = display_order()
    index = [TOKEN_TO_ID[t] for t in order]
    fig, axes = plt.subplots(1, 2, figsize=(16, 7.6))
    for ax, (space, sim) in zip(axes, spaces.items()):
        image = ax.imshow(sim[np.ix_(index, index)], cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=4)
        ax.set_yticks(range(len(order)), order, fontsize=4)
        for _, first, _stop in class_spans(order):
            ax.axvline(first - 0.5, color="k", lw=0.3)
            ax.axhline(first - 0.5, color="k", lw=0.3)
        ax.set_title(f"{space} space" + (" (layer 1 input columns)" if space == "input" else " (softmax rows)"))
    fig.colorbar(image, ax=axes, shrink=0.6, label="cosine similarity")
    mean_within = {space: _mean_within_class(sim, order) for space, sim in spaces.items()}
    for space, value in mean_within.items():
        numbers.add("tokens", "mean_similarity_within_class", space, value[0])
        numbers.add("tokens", "mean_similarity_between_classes", space, value[1])
    clauses = []
    for space in ("output", "input"):
        within, between = mean_within[space]
        relation = "more alike than" if within > between + 0.02 else "no more alike than"
        clauses.append(f"in the {space} space tokens of one class are {relation} tokens of different classes "
                       f"({within:.2f} against {between:.2f} on average)")
    section.figures.append(Figure(ctx.savefig(fig, "tokens_similarity.png"), (
        "Cosine similarity of every pair of tokens, grouped by class: " + "; ".join(clauses) + ".")))

    # Enharmonic ranks.
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(explicit)), 3.4))
    x = np.arange(len(explicit))
    for offset, space in ((-0.2, "input"), (0.2, "output")):
        both = [(ranks["explicit", space, a, b] + ranks["explicit", space, b, a]) / 2 for a, b in explicit]
        ax.bar(x + offset, both, 0.4, label=f"{space} space")
    ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(x, [f"{a} {b}" for a, b in explicit], rotation=60, fontsize=7)
    ax.set_ylabel("neighbour rank (mean of both ways)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    best = min(explicit, key=lambda p: ranks["explicit", "output", p[0], p[1]] + ranks["explicit", "output", p[1], p[0]])
    section.figures.append(Figure(ctx.savefig(fig, "tokens_enharmonic_ranks.png"), (
        f"Where each enharmonic pair ranks among each other's nearest neighbours (lower is closer). Median rank: "
        f"{medians['explicit', 'input']:.0f} in the input space and {medians['explicit', 'output']:.0f} in the "
        f"output space against about {chance:.0f} by chance "
        f"(C-major reading: {medians['c_major', 'input']:.0f} and {medians['c_major', 'output']:.0f}); the closest "
        f"pair is {code(best[0])}/{code(best[1])} (output ranks {ranks['explicit', 'output', best[0], best[1]]} and "
        f"{ranks['explicit', 'output', best[1], best[0]]}).")))

    # 2-D map of the pitch tokens.
    pitches = sorted(PITCH_TOKENS, key=pitch_sort_key)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    cmap = plt.get_cmap("hsv")
    for ax, (space, vectors) in zip(axes, (("input", input_vectors(model)), ("output", output_vectors(model)))):
        xy = pitch_map(vectors, pitches)
        for (px, py), token in zip(xy, pitches):
            height = sounding_pitch(token, {})
            ax.scatter(px, py, color=cmap((height % 12) / 12), s=18)
            ax.annotate(token, (px, py), fontsize=7, xytext=(2, 2), textcoords="offset points")
        for a, b in explicit:
            pa, pb = xy[pitches.index(a)], xy[pitches.index(b)]
            ax.plot([pa[0], pb[0]], [pa[1], pb[1]], color="k", lw=0.5, alpha=0.5)
        ax.set_title(f"pitch tokens, {space} space (first two principal components)")
    distances = _pair_distance_ratio(pitches, explicit, model)
    numbers.add("tokens", "enharmonic_map_distance_ratio", "output", distances)
    section.figures.append(Figure(ctx.savefig(fig, "tokens_pitch_map.png"), (
        f"The pitch tokens on the first two principal components of each space, coloured by pitch class, with "
        f"enharmonic pairs joined. In the output space the enharmonic pairs lie {distances:.2f} times as far "
        f"apart as two pitch tokens on average (in all dimensions): below 1 means the model places them together.")))
    rows = ["| pair | input rank a->b | b->a | output rank a->b | b->a |", "|---|---:|---:|---:|---:|"]
    for a, b in explicit:
        rows.append(f"| {code(a)} {code(b)} | {ranks['explicit', 'input', a, b]} | {ranks['explicit', 'input', b, a]} | "
                    f"{ranks['explicit', 'output', a, b]} | {ranks['explicit', 'output', b, a]} |")
    section.table = "\n".join(rows)
    return section


def _mean_within_class(sim: np.ndarray, order: list[str]) -> tuple[float, float]:
    """Mean similarity of distinct tokens of one class, and of tokens of different classes."""
    label = np.zeros(len(TOKENS), int)
    for c, (_, first, stop) in enumerate(class_spans(order)):
        for t in order[first:stop]:
            label[TOKEN_TO_ID[t]] = c
    same = label[:, None] == label[None, :]
    off = ~np.eye(len(TOKENS), dtype=bool)
    return float(sim[same & off].mean()), float(sim[~same].mean())


def _pair_distance_ratio(pitches: list[str], pairs: list[tuple[str, str]], model) -> float:
    """Mean distance between enharmonic partners over the mean distance between pitch tokens."""
    v = output_vectors(model)
    idx = [TOKEN_TO_ID[t] for t in pitches]
    x = v[idx]
    all_d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    mean_all = all_d[np.triu_indices(len(idx), 1)].mean()
    pair_d = [np.linalg.norm(v[TOKEN_TO_ID[a]] - v[TOKEN_TO_ID[b]]) for a, b in pairs]
    return float(np.mean(pair_d) / mean_all) if pairs and mean_all > 0 else float("nan")
