"""folkrnn analyze: each part on tiny models whose answer the test knows."""

from __future__ import annotations

import os
from fractions import Fraction as Fr

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from folkrnn.model.analysis import copying, counting, nudging, parameters
from folkrnn.model.analysis import tokens as relations
from folkrnn.model.analysis.activations import FALLBACK_TUNE, bar_steps, run_states, sparsity, trace_tune
from folkrnn.model.analysis.common import AnalysisSettings, Context, Generated, generate
from folkrnn.model.analysis.timing import timeline
from folkrnn.model.checkpoint import save_checkpoint
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.vocab import BAR_TOKENS, TOKEN_TO_ID
from folkrnn.transforms.validator import bar_lengths, validate_tokens
from tests.conftest import small_model

ID = TOKEN_TO_ID


SHORT_TUNES = 2.0  # added to the </s> logit of the test models: short tunes keep generation quick


def small_settings(**overrides) -> AnalysisSettings:
    values = dict(num_tunes=16, max_tokens=60, batch_size=16, counting_tunes=6, ablation_ks=(0, 2),
                  nudge_targets=("C",), nudge_deltas=(-4.0, 0.0, 4.0), ingest=None)
    values.update(overrides)
    return AnalysisSettings(**values)


# --- Position in the bar -------------------------------------------------------------------------
# A hand-made tune: a pickup of 2, a bar with a broken rhythm, halves, a triplet and a chord, a bar
# with a rest. Expected (position in bar, onset) for every boundary token, worked out by hand.
HAND_TUNE = "M:4/4 K:Cmaj G 2 | c > d e /2 f /2 g 2 (3 a b c' [ c e ] | z 4 c 4 :|".split()
HAND_BOUNDARIES = {  # token index: (position, onset)
    2: (0, 0), 4: (2, 2), 5: (0, 2), 7: (Fr(3, 2), Fr(7, 2)), 8: (2, 4), 10: (Fr(5, 2), Fr(9, 2)),
    12: (3, 5), 14: (5, 7), 15: (5, 7), 16: (Fr(17, 3), Fr(23, 3)), 17: (Fr(19, 3), Fr(25, 3)),
    18: (7, 9), 22: (8, 10), 23: (0, 10), 25: (4, 14), 27: (8, 18),
}


def test_positions_in_the_bar_of_a_hand_made_tune_are_exact():
    line = timeline(HAND_TUNE)
    assert line.meter == "4/4" and line.bar_length == 8
    assert {i for i, b in enumerate(line.boundary) if b} == set(HAND_BOUNDARIES)
    for i, (position, onset) in HAND_BOUNDARIES.items():
        assert (line.position[i], line.onset[i]) == (position, onset), (i, HAND_TUNE[i])
    # tokens inside an element share its onset: "2" after G, "/2" after e, the chord's inner notes
    assert line.onset[3] == 0 and line.onset[9] == 4 and line.onset[19] == line.onset[21] == 9
    assert bar_lengths(HAND_TUNE) == [2, 8, 8]  # the validator agrees on the bar lengths


@pytest.mark.parametrize("tune", [
    "M:6/8 K:Cmin (3 c d e f 2 | (2 c d (4 c d e f | c 3 c 3 :| |2 c 6 |",
    "M:9/8 K:Cdor c 2 > d /2 e /2 < f /2 2 > g | [ c 2 e ] 3 [ c e ] 3/2 z 3 |",
    "M:3/4 K:Cmix c 2 (5 c d e f g | c 4> d c 2 | [ c e ] /2 c 3/2 d 4 |",
])
def test_bar_lengths_agree_with_the_validator(tune):
    tokens = tune.split()
    line = timeline(tokens)
    mine, has_notes = [], False
    for i, token in enumerate(tokens):
        if token in BAR_TOKENS:
            if has_notes:
                mine.append(line.position[i])
            has_notes = False
        elif line.boundary[i] and not token.startswith("("):
            has_notes = True
    assert mine == bar_lengths(tokens)[: len(mine)] and mine


def test_rates_of_generated_tunes():
    tunes = [list(FALLBACK_TUNE), "M:4/4 K:Cmaj c 8 | d 4 |".split(), "K:Cmaj c d e".split()]
    findings = [validate_tokens(t) for t in tunes]
    rates = Generated([1, 2, 3], tunes, [False, False, True], findings).rates()
    assert rates["valid_rate"] == pytest.approx(1 / 3) and rates["standard_form_rate"] == pytest.approx(1 / 3)
    # the short last bar is a counting error; the tune without M: cannot be checked, so it is not bar-valid
    assert rates["bar_valid_rate"] == pytest.approx(1 / 3)
    assert rates["truncated_rate"] == pytest.approx(1 / 3)
    assert rates["mean_length"] == pytest.approx(np.mean([len(t) for t in tunes]))


# --- Parameters --------------------------------------------------------------------------------------
def test_parameter_readouts_show_what_the_test_set(tmp_path):
    model = small_model(end_bias=SHORT_TUNES)
    n = model.layers[0].n_units
    with torch.no_grad():
        model.out.bias.zero_()
        model.out.bias[ID["^f"]] = 7.0
        block = torch.diag(torch.arange(n, 0, -1).float())  # singular values n, n-1, ..., 1
        model.layers[1].weight_hh[n : 2 * n] = block  # layer 2's recurrent forget-gate block
    assert max(parameters.output_bias(model).items(), key=lambda kv: kv[1]) == ("^f", 7.0)
    sv = parameters.singular_values(model)["layer2.recurrent.f"]
    assert np.allclose(sv, np.arange(n, 0, -1))
    assert parameters.gate_norms(model)[2, "f", "recurrent"] == pytest.approx(float(np.sqrt((sv**2).sum())))
    assert parameters.effective_rank(np.ones(8)) == pytest.approx(8)
    assert parameters.effective_rank(np.array([3.0, 0, 0])) == pytest.approx(1)
    ctx = Context(model, small_settings(), str(tmp_path))
    section = parameters.analyze(ctx)
    assert ctx.numbers.get("parameters", "output_bias", "^f") == 7.0
    assert "`^f` (+7.00)" in section.figures[2].caption
    assert all(os.path.isfile(tmp_path / f.file) for f in section.figures)


# --- Token relationships ----------------------------------------------------------------------------
def test_enharmonic_pairs_come_from_pitch_arithmetic():
    pairs = relations.enharmonic_pairs()
    assert {("_G", "^F"), ("=B", "_c"), ("_C", "=B,"), ("_g", "^f")} <= set(pairs)
    for a, b in pairs:
        assert relations.sounding_pitch(a) == relations.sounding_pitch(b) is not None
        assert a[0] in "^_=" and b[0] in "^_="
    assert not any("B" in (a, b) for a, b in pairs)  # unmarked B is B flat in Cmin/Cdor/Cmix
    assert ("_c", "B") in relations.enharmonic_pairs(unmarked_in_c_major=True)


def test_an_enharmonic_pair_with_equal_input_columns_ranks_first(tmp_path):
    model = small_model(1, end_bias=SHORT_TUNES)
    with torch.no_grad():
        model.layers[0].weight_ih[:, ID["_G"]] = model.layers[0].weight_ih[:, ID["^F"]]
        model.out.weight[ID["_g"]] = model.out.weight[ID["^f"]]
    sim_in = relations.cosine_similarity(relations.input_vectors(model))
    assert relations.neighbour_rank(sim_in, ID["_G"], ID["^F"]) == 1
    assert relations.neighbour_rank(sim_in, ID["^F"], ID["_G"]) == 1
    ctx = Context(model, small_settings(), str(tmp_path))
    relations.analyze(ctx)
    assert ctx.numbers.get("tokens", "enharmonic_rank_input", "_G->^F") == 1
    assert ctx.numbers.get("tokens", "enharmonic_rank_output", "^f->_g") == 1
    assert ctx.numbers.get("tokens", "enharmonic_rank_output", "_G->^F") > 1  # not set: not first


# --- Activations ---------------------------------------------------------------------------------------
def test_states_match_the_network_and_mark_the_bar_lines():
    model = small_model(2, layers=3, units=8, end_bias=SHORT_TUNES)
    ids = torch.tensor([[TOKEN_TO_ID["<s>"]] + [ID[t] for t in HAND_TUNE]])
    hs, cs, logits = run_states(model, ids)
    expected, state = model(ids)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(hs[2][:, -1], state[2][0], atol=1e-6) and torch.allclose(cs[0][:, -1], state[0][1], atol=1e-6)
    trace = trace_tune(model, HAND_TUNE)
    assert trace.h.shape == trace.c.shape == (3, len(HAND_TUNE) + 1, 8)
    assert [trace.tokens[s] for s in bar_steps(trace)] == ["|", "|", ":|"]
    assert bar_steps(trace) == [5, 23, 28]  # step s read HAND_TUNE[s - 1]
    assert sparsity(np.array([0.0, 0.05, -0.5, 1.0])) == 0.5


# --- Counting -----------------------------------------------------------------------------------------
def test_fourier_finds_the_unit_the_test_made_periodic():
    rng = np.random.default_rng(0)
    grid = np.arange(0, 256, counting.GRID)  # 32 bars of 4/4 in sixteenths
    signal = rng.normal(size=(len(grid), 12))
    signal[:, 7] = np.sin(2 * np.pi * grid / 8) + 0.3 * rng.normal(size=len(grid))
    score, chance = counting.bar_band_fraction(signal, 8.0)
    assert int(np.argmax(score)) == 7 and score[7] > 0.8
    assert np.delete(score, 7).max() < 0.15 and chance < 0.05
    # a unit periodic at two bars is not a bar unit
    signal[:, 3] = np.sin(2 * np.pi * grid / 16)
    assert counting.bar_band_fraction(signal, 8.0)[0][3] < 0.05


def test_resampling_holds_the_last_token_read():
    values = np.array([[0.0], [1.0], [2.0], [3.0]])
    onsets = np.array([0, 0, 1.5, 2])  # <s> and a pitch at 0, then notes at 1.5 and 2
    assert counting.resample(values, onsets).ravel().tolist() == [1.0, 1.0, 1.0, 2.0, 3.0]


def test_bar_probability_rows_follow_the_positions():
    model = small_model(3, end_bias=SHORT_TUNES)
    with torch.no_grad():
        model.out.bias[ID["|"]] = 30.0  # the model always wants a bar line
    (h, p_bar), = counting.read_tunes(model, [HAND_TUNE])
    assert h.shape == (len(HAND_TUNE) + 1, 16) and np.all(p_bar > 0.99)
    rows = counting.bar_probability_rows([HAND_TUNE], [p_bar])
    kept = [i for i in sorted(HAND_BOUNDARIES) if HAND_TUNE[i - 1] not in BAR_TOKENS]  # 5 and 23 follow |
    assert rows["position"].tolist() == [float(HAND_BOUNDARIES[i][0]) for i in kept]
    assert rows["is_bar"].tolist() == [HAND_TUNE[i] in BAR_TOKENS for i in kept]


def test_silencing_zero_units_is_the_baseline_and_silenced_units_are_cut_off(tmp_path):
    model = small_model(4, end_bias=SHORT_TUNES)
    settings = small_settings()
    baseline = generate(model, settings)
    assert generate(counting.silence(model, 1, []), settings).tokens == baseline.tokens
    silenced = counting.silence(model, 1, [3, 5])
    assert model.out.weight[:, 3].abs().sum() > 0  # the original is untouched
    ids = torch.tensor([[ID["<s>"]] + [ID[t] for t in HAND_TUNE]])
    before = silenced(ids)[0]
    with torch.no_grad():  # whatever units 3 and 5 compute, nothing downstream sees it
        for gate in range(4):
            silenced.layers[1].weight_ih[gate * 16 + 3] += 5.0
            silenced.layers[1].bias[gate * 16 + 5] -= 5.0
    assert torch.allclose(silenced(ids)[0], before, atol=1e-6)
    ctx = Context(model, settings, str(tmp_path))
    results = counting.ablation(ctx, np.arange(16))
    assert results["top", 0] == results["random", 0] == baseline.rates()
    assert set(results) == {("top", 0), ("random", 0), ("top", 2), ("random", 2)}


# --- Nudging -----------------------------------------------------------------------------------------
def test_nudging_raises_the_share_of_the_nudged_tokens(tmp_path):
    assert nudging.resolve_target("C") == ["C"]
    assert set(nudging.resolve_target("bar")) == BAR_TOKENS
    with pytest.raises(UsageError):
        nudging.resolve_target("H")
    model = small_model(5, end_bias=SHORT_TUNES)
    nudged = nudging.nudge(model, ["C"], 3.0)
    assert float(nudged.out.bias[ID["C"]] - model.out.bias[ID["C"]]) == pytest.approx(3.0)
    ctx = Context(model, small_settings(), str(tmp_path))
    both = nudging.sweep(ctx, "C")
    results = both["plain"]
    shares = [results[d]["target_share"] for d in (-4.0, 0.0, 4.0)]
    assert shares[0] < shares[1] < shares[2] and shares[2] > 0.3
    assert {k: v for k, v in results[0.0].items() if k != "target_share"} == ctx.baseline().rates()
    # the well-formed sampler beside it: valid whatever the nudge, and the nudge still takes hold
    formed = both["well-formed"]
    assert all(formed[d]["valid_rate"] == 1.0 and formed[d]["removed_per_tune"] >= 0 for d in formed)
    assert formed[4.0]["target_share"] > formed[-4.0]["target_share"]


# --- Copying -----------------------------------------------------------------------------------------
def test_copying_finds_a_planted_run():
    rng = np.random.default_rng(1)
    corpus = [rng.integers(0, 137, size=60) for _ in range(20)]
    query = rng.integers(0, 137, size=50)
    query[30:42] = corpus[3][10:22]  # 12 tokens of training tune 3
    index = copying.RunIndex(corpus, 8)
    match = index.longest(query)
    assert (match.length, match.query_start, match.sequence, match.start) == (12, 30, 3, 10)
    # runs never cross from one corpus tune into the next
    across = np.concatenate([corpus[4][-6:], corpus[5][:6]])
    assert index.longest(across).length == 0
    assert copying.RunIndex(corpus, 8).longest(corpus[7]).length == 60


def test_copying_counts_whole_bars():
    def ids(text):
        return [ID[t] for t in text.split()]

    train = [ids("M:4/4 K:Cmaj c 8 | d 8 | e 8 | f 8 |"), ids("M:3/4 K:Cmin g 6 | a 6 | b 6 |")]
    index = copying.CopyIndex(train, token_anchor=8)
    tokens, bars = index.query(ids("M:4/4 K:Cdor g 6 | d 8 | e 8 | f 8 | c 2 |"))
    assert (bars.length, bars.sequence) == (3, 0) and tokens.length == 10  # "| d 8 | e 8 | f 8 |"


def write_ingest(folder, tunes: list[list[str]]) -> str:
    os.makedirs(os.path.join(folder, "tunes"), exist_ok=True)
    table = pa.table({
        "id": [f"test/{i}" for i in range(len(tunes))],
        "title": [f"Tune {i}" for i in range(len(tunes))],
        "token_ids": pa.array([[ID[t] for t in tune] for tune in tunes], type=pa.list_(pa.int16())),
        "split": ["valid" if i == 0 else "train" for i in range(len(tunes))],
    })
    pq.write_table(table, os.path.join(folder, "tunes", "part-00000-of-00001.parquet"))
    return str(folder)


# --- The command --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    model = small_model(6, end_bias=SHORT_TUNES)
    save_checkpoint(path, model, model.config)
    return path


def test_cli_writes_a_report_with_every_part(tmp_path, checkpoint, capsys):
    from folkrnn.pipeline import cli

    ingest = write_ingest(tmp_path / "ingest", [FALLBACK_TUNE, FALLBACK_TUNE[:40], HAND_TUNE])
    out = tmp_path / "report"
    code = cli.main(["analyze", checkpoint, "--out", str(out), "--num-tunes", "12", "--max-tokens", "50",
                     "--ablation-ks", "0,2", "--nudge", "C,bar", "--nudge-deltas=-2,0,2", "--counting-tunes", "4",
                     "--ingest", ingest, "--tune", " ".join(FALLBACK_TUNE), "--quiet"])
    assert code == 0
    report = (out / "report.md").read_text()
    for title in ("Parameters", "Token relationships", "Activations", "Counting", "Nudging", "Copying"):
        assert f"## {title}" in report
    images = [line[line.index("(") + 1 : -1] for line in report.splitlines() if line.startswith("![")]
    assert len(images) == 15 and all((out / image).is_file() for image in images)
    assert "the given tune" in report and "Skipped" not in report
    numbers = pq.read_table(out / "numbers.parquet").to_pylist()
    parts = {row["part"] for row in numbers}
    assert {"parameters", "tokens", "activations", "counting", "nudging", "copying", "timing"} <= parts
    assert (out / "report.html").read_text().count("<figure>") == len(images)

    only = tmp_path / "only"
    assert cli.main(["analyze", checkpoint, "--out", str(only), "--only", "counting,nudging", "--num-tunes", "8",
                     "--max-tokens", "40", "--ablation-ks", "0", "--nudge", "2", "--nudge-deltas=0,3",
                     "--quiet"]) == 0
    report = (only / "report.md").read_text()
    assert "## Counting" in report and "## Nudging" in report and "## Parameters" not in report
    capsys.readouterr()
    assert cli.main(["analyze", checkpoint, "--only", "counting,colour"]) == 2
    assert "--only" in capsys.readouterr().err
    assert cli.main(["analyze", checkpoint, "--only", "copying", "--ingest", str(tmp_path / "none")]) == 2


def test_missing_corpus_is_noted_unless_asked_for(tmp_path):
    from folkrnn.model.analysis.common import PARTS
    from folkrnn.model.analysis.report import run_analysis
    from folkrnn.pipeline.analyze import PARTS as CLI_PARTS

    assert CLI_PARTS == PARTS  # the CLI keeps its own copy so that --help does not import torch
    settings = small_settings(ingest=str(tmp_path / "none"))
    result = run_analysis(small_model(end_bias=SHORT_TUNES), str(tmp_path / "out"), ("copying",), settings)
    assert "Skipped: no ingest dataset" in result["report"]
    with pytest.raises(copying.MissingCorpus):
        run_analysis(small_model(end_bias=SHORT_TUNES), str(tmp_path / "out"), ("copying",), settings, strict=True)


def test_tune_from_abc_or_tokens(tmp_path):
    from folkrnn.pipeline.analyze import read_tune

    assert read_tune("M:6/8 K:Cmaj c 3 |") == ["M:6/8", "K:Cmaj", "c", "3", "|"]
    path = tmp_path / "tune.abc"
    path.write_text("X:1\nT:Test\nM:2/4\nL:1/8\nK:G\nGA Bc|d2 d2|\n")
    tokens = read_tune(str(path))
    assert tokens[:2] == ["M:2/4", "K:Cmaj"] and validate_tokens(tokens).bar_count == 2
    with pytest.raises(UsageError):
        read_tune("not a tune at all")
