"""One definition of a tune's meter and mode (issue 13, item 18).

The validator reported mode ``?`` (missing_key) for tunes whose only K: token came after the first
body token, while the generated rows said ``maj`` for them: the row took the first K: anywhere.
"""

from __future__ import annotations

from folkrnn.model.generate import RunSettings, tune_row
from folkrnn.model.sample import SampledTune
from folkrnn.pipeline.compare import DatasetStats
from folkrnn.schemas.vocab import TOKEN_TO_ID
from folkrnn.transforms.validator import meter_and_mode, summarize, validate_tokens

# K: only inside the body (as tune 1263 of the demo's 30,000): no mode.
KEY_IN_BODY = ["M:4/4", "|:", "c", "d", "e", "f", "K:Cmaj", "g", "a", "b", "c'", ":|"]
NORMAL = ["M:6/8", "K:Cmin", "|:", "G", "c", "d", "e", "2", "c", ":|"]


def ids(tokens: list[str]) -> list[int]:
    return [TOKEN_TO_ID[t] for t in tokens]


def test_key_after_the_first_body_token_is_no_mode_everywhere():
    assert meter_and_mode(KEY_IN_BODY) == ("4/4", None)
    findings = validate_tokens(KEY_IN_BODY)
    assert findings.mode is None and "missing_key" in findings.reasons
    row = tune_row(SampledTune(1263, ids(KEY_IN_BODY), False),
                   RunSettings(checkpoint_id="x", num_tunes=1))
    assert row["mode"] is None and row["meter"] == "4/4"
    assert summarize([findings])["by_mode"].keys() == {"?"}
    profile = DatasetStats("generated")
    profile.add(KEY_IN_BODY, findings.as_row())
    assert dict(profile.modes) == {"?": 1}


def test_header_meter_and_mode_agree_everywhere():
    findings = validate_tokens(NORMAL)
    row = tune_row(SampledTune(1, ids(NORMAL), False), RunSettings(checkpoint_id="x", num_tunes=1))
    assert meter_and_mode(NORMAL) == (findings.meter, findings.mode) == (row["meter"], row["mode"]) == ("6/8", "min")
    assert meter_and_mode(["<s>", *NORMAL]) == ("6/8", "min")
