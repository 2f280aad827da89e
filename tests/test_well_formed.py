"""--well-formed sampling: every fault the validator knows, made by an unconstrained sampler and
avoided by the grammar; valid tunes from the hardest model (random weights, v2 size); tunes
reproducible by number as before; forms; the command line."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest
import torch

from folkrnn.model.checkpoint import save_checkpoint
from folkrnn.model.grammar import Form
from folkrnn.model.network import FolkRNN, ModelConfig
from folkrnn.model.sample import Sampler, sample_in_order
from folkrnn.pipeline import cli
from folkrnn.schemas.vocab import TOKEN_TO_ID
from folkrnn.transforms.validator import REASON_CODES, validate_tokens

HEADER = ["M:4/4", "K:Cmaj"]
PITCHES = ["C", "D", "E", "F", "G", "A", "B", "c", "d", "e"]


def fixed_model(logits: dict[str, float], default: float = -8.0) -> FolkRNN:
    """A model that says the same at every step: all weights zero, the output bias given."""
    model = FolkRNN(ModelConfig(n_layers=1, n_units=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.out.bias.fill_(default)
        for token, value in logits.items():
            model.out.bias[TOKEN_TO_ID[token]] = value
    return model


def named(**extra: float) -> dict[str, float]:
    """Notes and bar lines at plausible rates, ``</s>`` now and then, and the named tokens' logits."""
    logits = {p: 1.0 for p in PITCHES}
    logits.update({"|": 0.5, "2": 0.0, "</s>": -2.0})
    logits.update({TOKEN_NAMES[name]: value for name, value in extra.items()})
    return logits


TOKEN_NAMES = {"meter": "M:4/4", "key": "K:Cmaj", "start": "<s>", "end": "</s>", "dur": "4", "broken": ">",
               "tuplet": "(3", "open": "[", "close": "]", "bar": "|", "rep_open": "|:", "rep_close": ":|",
               "first": "|1", "second": "|2", "long": "8"}

# For each reason code: the fixed model's preferences and the prime that make the fault likely.
FAULTS: dict[str, tuple[dict[str, float], list[str]]] = {
    "truncated": (named(end=-30.0), HEADER),
    "missing_meter": (named(key=2.0, meter=-30.0), []),
    "missing_key": (named(meter=2.0, key=-30.0), []),
    "duplicate_meter": (named(meter=3.0, key=1.0), []),
    "duplicate_key": (named(meter=1.0, key=3.0), []),
    "header_order": (named(meter=3.0, key=3.0), []),
    "header_in_body": (named(meter=0.0), HEADER),
    "misplaced_start": (named(start=0.0), HEADER),
    "empty_body": (named(end=4.0), HEADER),
    "duration_without_note": (named(dur=2.0), HEADER),
    "broken_without_pair": (named(broken=1.5), HEADER),
    "tuplet_incomplete": (named(tuplet=1.0, bar=2.0), HEADER),
    "unclosed_chord": (named(open=0.5, close=-30.0), HEADER),
    "unmatched_chord_close": (named(close=0.5), HEADER),
    "empty_chord": (named(open=1.0, close=3.0), HEADER),
    "bar_too_long": (named(long=1.5, bar=-1.0), HEADER),
    "bar_too_short": (named(bar=2.0), HEADER),
    "unmatched_ending": (named(first=0.0), HEADER),
    "ending_without_repeat": (named(first=0.0, second=0.0), HEADER),
    "unclosed_repeat": (named(rep_open=0.0, rep_close=-30.0), HEADER),
    "unmatched_repeat_end": (named(rep_close=0.5), HEADER),
}
# A sampler cannot write these: it stops at </s>, its tokens are the vocabulary's, and the
# validator's own failure is not a property of tunes.
NOT_FROM_A_SAMPLER = {"tokens_after_end", "unknown_token", "internal_error"}


def test_every_reason_code_has_a_fault_case():
    assert set(FAULTS) | NOT_FROM_A_SAMPLER == set(REASON_CODES)


@pytest.mark.parametrize("code", sorted(FAULTS))
def test_the_fault_happens_unconstrained_and_never_well_formed(code):
    logits, prime = FAULTS[code]
    sampler = Sampler(fixed_model(logits))
    numbers = list(range(1, 97))
    plain = sample_in_order(sampler, numbers, seed=1, prime=prime, max_tokens=60)
    made = [validate_tokens(t.tokens, truncated=t.truncated) for t in plain]
    assert any(code in f.reasons for f in made), f"the unconstrained sampler never made {code}"
    for tune in sample_in_order(sampler, numbers, seed=1, prime=prime, max_tokens=60, well_formed=True):
        findings = validate_tokens(tune.tokens, truncated=tune.truncated)
        assert findings.valid and not tune.truncated, (code, findings.reasons, " ".join(tune.tokens))
        assert tune.tokens[:len(prime)] == prime and tune.constraint_log_mass <= 0.0


def random_v2() -> FolkRNN:
    torch.manual_seed(0)
    return FolkRNN(ModelConfig()).eval()  # v2 sizes, its initialisation: the hardest case


def test_ten_thousand_tunes_of_a_random_v2_model_are_all_valid():
    sampler = Sampler(random_v2())
    invalid = []
    count = 0
    for tune in sampler.sample(range(1, 10_001), seed=0, max_tokens=72, batch_size=1024, well_formed=True):
        count += 1
        findings = validate_tokens(tune.tokens, truncated=tune.truncated)
        if not findings.valid or tune.truncated:
            invalid.append((tune.number, findings.reasons))
    assert count == 10_000 and invalid == []


def noisy_model() -> FolkRNN:
    torch.manual_seed(3)
    model = FolkRNN(ModelConfig(n_layers=2, n_units=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(scope="module")
def small() -> Sampler:
    return Sampler(noisy_model())


@pytest.mark.parametrize("form", [None, Form.parse("AABB", 4)], ids=["well-formed", "AABB"])
def test_a_tune_depends_on_its_number_not_its_batch(small, form):
    numbers = list(range(1, 25))
    kwargs = {"seed": 5, "max_tokens": 100, "well_formed": True, "form": form}
    one = sample_in_order(small, numbers, batch_size=1, **kwargs)
    many = sample_in_order(small, numbers, batch_size=512, **kwargs)
    shuffled = numbers[:]
    random.Random(2).shuffle(shuffled)
    mixed = {t.number: t for t in small.sample(shuffled, batch_size=37, **kwargs)}
    assert [t.token_ids for t in one] == [t.token_ids for t in many] == [mixed[n].token_ids for n in numbers]
    assert [t.constraint_log_mass for t in one] == [t.constraint_log_mass for t in many]
    plain = sample_in_order(small, numbers, batch_size=512, seed=5, max_tokens=100)
    assert [t.token_ids for t in plain] != [t.token_ids for t in many]  # the grammar did something


def test_a_header_wildcard_is_filled_so_the_prime_still_fits(small):
    # three eighths then a bar line: only a meter of three eighths' pickup room and more fits, not 2/4's
    prime = ["*", "*", "c", "d", "e", "f", "g", "|"]
    tunes = sample_in_order(small, list(range(1, 41)), seed=2, prime=prime, max_tokens=120, well_formed=True)
    assert all(validate_tokens(t.tokens).valid for t in tunes)
    assert "M:2/4" not in {t.tokens[0] for t in tunes}  # five eighths cannot be a 2/4 pickup
    with pytest.raises(ValueError, match="only its meter and mode"):
        list(small.sample([1], prime=["M:4/4", "K:Cmaj", "*"], well_formed=True))
    with pytest.raises(ValueError, match="token 4 \\(16\\)"):
        list(small.sample([1], prime=["M:4/4", "K:Cmaj", "c", "16"], well_formed=True))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("wf") / "small.pt")
    model = noisy_model()
    save_checkpoint(path, model, model.config)
    return path


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def test_cli_runs_are_valid_and_numbers_regenerate(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli("generate", checkpoint, "--out", out, "--num-tunes", "40", "--form", "AABB",
                   "--bars-per-part", "4", "--max-tokens", "400", "--quiet") == 0
    table = pq.read_table(out + "/generated")
    for row in table.to_pylist():
        findings = validate_tokens(row["tokens"])
        assert findings.valid and findings.form == "AABB" and row["constraint_log_mass"] <= 0
    capsys.readouterr()
    assert run_cli("generate", checkpoint, "--numbers", "17", "--form", "AABB", "--bars-per-part", "4",
                   "--max-tokens", "400") == 0
    row = table.filter(table.column("number").to_numpy() == 17).to_pylist()[0]
    assert capsys.readouterr().out.strip() == row["abc"].strip()
    assert run_cli("stats", out) == 0
    assert "well-formed sampling (40 tunes)" in capsys.readouterr().out


def test_beam_and_local_runs_write_the_same_well_formed_shards(checkpoint, tmp_path):
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    common = ["generate", checkpoint, "--num-tunes", "24", "--shard-size", "8", "--max-tokens", "120",
              "--well-formed", "--quiet"]
    assert run_cli(*common, "--out", local, "--batch-size", "64") == 0
    assert run_cli(*common, "--out", beam, "--batch-size", "5", "--runner", "DirectRunner") == 0
    for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet"):
        with open(f"{local}/generated/{name}", "rb") as a, open(f"{beam}/generated/{name}", "rb") as b:
            assert a.read() == b.read()


@pytest.mark.parametrize("flags, message", [
    (["--form", "AB"], "--form: form 'AB': two parts played once in a row"),
    (["--form", "AABB", "--bars-per-part", "8,x"], "--bars-per-part takes numbers"),
    (["--bars-per-part", "4"], "--bars-per-part needs --form"),
    (["--well-formed", "--prime", "M:4/4 K:Cmaj c 16"], "--well-formed: the prime is not well-formed at its token 4"),
    (["--form", "AABB", "--max-tokens", "30"], "--well-formed: --max-tokens 30 leaves no room"),
])
def test_cli_mistakes_are_one_line(checkpoint, tmp_path, capsys, flags, message):
    assert run_cli("generate", checkpoint, "--out", str(tmp_path / "x"), "--num-tunes", "2", *flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_gives_valid_tunes_whatever_the_batch():
    gpu = Sampler(random_v2(), device="cuda")
    a = sample_in_order(gpu, list(range(1, 301)), seed=3, max_tokens=100, well_formed=True)
    b = sample_in_order(gpu, list(range(1, 301)), seed=3, max_tokens=100, well_formed=True, batch_size=17)
    assert [t.token_ids for t in a] == [t.token_ids for t in b]
    assert all(validate_tokens(t.tokens).valid for t in a)
