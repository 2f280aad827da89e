"""The well-formed grammar (model/grammar.py), on its own: random walks through what it allows.

A walk draws each token uniformly among those the mask allows (no model), so it goes wherever the
grammar lets it, far from what a trained model would write: every walk must end with ``</s>``
within its budget, never meet a step with nothing allowed, and pass the validator.
"""

from __future__ import annotations

import pytest
import torch

from folkrnn.model.grammar import Form, Grammar
from folkrnn.schemas.vocab import END_ID, TOKENS
from folkrnn.transforms.validator import validate_tokens

BAR_BIAS = torch.ones(len(TOKENS))
for _token in ("|", "|:", ":|", "|1", "|2"):
    BAR_BIAS[TOKENS.index(_token)] = 30.0  # bar lines far more often: the section machine at work
BAR_BIAS[END_ID] = 0.2


def walk(rows: int, max_tokens: int, seed: int, form: Form | None = None, bias: torch.Tensor | None = None):
    grammar = Grammar("cpu", form)
    state = grammar.start(rows)
    generator = torch.Generator().manual_seed(seed)
    tunes: list[list[str]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool)
    for step in range(max_tokens):
        mask = grammar.allowed(state, torch.full((rows,), step), max_tokens)
        stuck = ~done & ~mask.any(1)
        assert not stuck.any(), f"dead end: {' '.join(tunes[int(stuck.nonzero()[0])])}"
        weights = mask.float() * (bias if bias is not None else 1.0)
        weights[done] = 0.0
        weights[done, END_ID] = 1.0
        tokens = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        for i in (~done).nonzero().squeeze(1).tolist():
            tunes[i].append(TOKENS[tokens[i]])
        grammar.advance(state, tokens)
        done |= tokens == END_ID
        if done.all():
            break
    return tunes


@pytest.mark.parametrize("max_tokens, bias", [(25, None), (60, BAR_BIAS), (300, None), (300, BAR_BIAS)],
                         ids=["tight", "tight-bars", "roomy", "roomy-bars"])
def test_every_walk_ends_in_budget_and_is_valid(max_tokens, bias):
    for tokens in walk(192, max_tokens, seed=max_tokens, bias=bias):
        assert tokens[-1] == "</s>" and len(tokens) <= max_tokens, " ".join(tokens)
        findings = validate_tokens(tokens)
        assert findings.valid, (findings.reasons, " ".join(tokens))


@pytest.mark.parametrize("letters, bars", [("AABB", 8), ("AAB", 4), ("ABB", 4), ("AABBCC", 2), ("A", 8)])
def test_a_form_is_followed_exactly(letters, bars):
    for tokens in walk(64, 500, seed=len(letters), form=Form.parse(letters, bars)):
        findings = validate_tokens(tokens)
        assert findings.valid and findings.form == letters, (findings.reasons, findings.form, " ".join(tokens))
        assert [section["bars"] for section in findings.sections] == [bars] * len(set(letters))
        assert findings.standard_form == (letters == "AABB" and bars == 8)


@pytest.mark.parametrize("letters, bars, message", [
    ("AB", 8, "two parts played once in a row"),
    ("ABA", 8, "new letters in order"),
    ("AAAB", 8, "once or twice"),
    ("AABB", [8], "one for each of the 2 parts"),
    ("AABB", 0, "1-64"),
    ("A-B", 8, "part letters"),
])
def test_forms_the_tokens_cannot_write_are_refused(letters, bars, message):
    with pytest.raises(ValueError, match=message):
        Form.parse(letters, bars)
