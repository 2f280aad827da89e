"""The batched sampler and the generation run: reproducible by number, resumable, same on Beam."""

from __future__ import annotations

import os
import random

import pyarrow.parquet as pq
import pytest
import torch

from folkrnn.model.checkpoint import save_checkpoint
from folkrnn.model.sample import Sampler, counter_uniform, sample_in_order
from folkrnn.schemas.vocab import END_ID, TOKEN_TO_ID
from tests.conftest import small_model

SHORT_TUNES = 2.0  # added to the </s> logit of the test models: tunes of a few dozen tokens keep the tests quick


@pytest.fixture(scope="module")
def sampler() -> Sampler:
    return Sampler(small_model(units=32, end_bias=SHORT_TUNES))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "small.pt")
    model = small_model(1, units=32, end_bias=SHORT_TUNES)
    save_checkpoint(path, model, model.config)
    return path


def test_counter_uniform_is_a_function_of_seed_number_and_step():
    numbers = torch.arange(1, 2001)
    steps = torch.full_like(numbers, 5)
    u = counter_uniform(3, numbers, steps)
    assert u.min() >= 0 and u.max() < 1 and 0.45 < u.mean() < 0.55
    assert torch.equal(u, counter_uniform(3, numbers, steps))
    assert torch.equal(u[10:20], counter_uniform(3, numbers[10:20], steps[10:20]))
    assert not torch.equal(u, counter_uniform(4, numbers, steps))
    assert not torch.equal(u, counter_uniform(3, numbers, steps + 1))
    assert len(set(u.tolist())) > 1990


def test_batch_size_and_order_do_not_change_any_tune(sampler):
    numbers = list(range(1, 201))
    one = sample_in_order(sampler, numbers, seed=11, batch_size=1, max_tokens=120)
    many = sample_in_order(sampler, numbers, seed=11, batch_size=512, max_tokens=120)
    shuffled = numbers[:]
    random.Random(5).shuffle(shuffled)
    odd = {t.number: t for t in sampler.sample(shuffled, seed=11, batch_size=37, max_tokens=120)}
    assert [t.token_ids for t in one] == [t.token_ids for t in many]
    assert [t.token_ids for t in one] == [odd[n].token_ids for n in numbers]
    assert len({tuple(t.token_ids) for t in one}) > 190  # different numbers, different tunes


def test_continuous_batching_finishes_every_number_once(sampler):
    tunes = list(sampler.sample(range(1, 301), seed=2, batch_size=16, max_tokens=40))
    assert sorted(t.number for t in tunes) == list(range(1, 301))
    truncated = [t for t in tunes if t.truncated]
    ended = [t for t in tunes if not t.truncated]
    assert truncated and ended
    assert all(len(t.token_ids) == 40 for t in truncated)
    assert all(len(t.token_ids) < 40 and END_ID not in t.token_ids for t in ended)


def test_seed_and_temperature_matter(sampler):
    base = sample_in_order(sampler, [1, 2, 3], seed=1, max_tokens=60)
    assert base != sample_in_order(sampler, [1, 2, 3], seed=2, max_tokens=60)
    cold = sample_in_order(sampler, [1, 2, 3], seed=1, temperature=0.01, max_tokens=60)
    assert cold[0].token_ids == cold[1].token_ids == cold[2].token_ids  # near-greedy: numbers stop mattering


def test_sampler_matches_the_training_network(sampler):
    """The step loop computes the same distribution as FolkRNN.forward: greedy decoding agrees."""
    model = small_model(units=32, end_bias=SHORT_TUNES)
    with torch.no_grad():
        model.out.bias[END_ID] -= 50.0  # so the greedy tune is long
    greedy = Sampler(model)
    tune = sample_in_order(greedy, [9], seed=0, top_k=1, max_tokens=30)[0]
    assert len(tune.token_ids) == 30
    ids = [TOKEN_TO_ID["<s>"]] + tune.token_ids
    logits, _ = model(torch.tensor([ids[:-1]]))
    assert logits[0].argmax(-1).tolist() == ids[1:]


def test_prime_is_kept_and_wildcards_are_filled(sampler):
    prime = ["M:6/8", "K:Cdor", "|:", "*", "c"]
    tunes = sample_in_order(sampler, list(range(1, 21)), seed=4, prime=prime, max_tokens=50)
    for t in tunes:
        assert t.tokens[:3] == ["M:6/8", "K:Cdor", "|:"] and t.tokens[4] == "c"
    assert len({t.tokens[3] for t in tunes}) > 1
    with pytest.raises(ValueError, match="not in the vocabulary"):
        list(sampler.sample([1], prime=["M:5/4"]))


def test_top_k_one_is_greedy(sampler):
    greedy = sample_in_order(sampler, [1, 2], seed=1, top_k=1, max_tokens=30)
    assert greedy[0].token_ids == greedy[1].token_ids


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_batch_size_does_not_change_tunes():
    gpu = Sampler(small_model(units=32, end_bias=SHORT_TUNES), device="cuda")
    a = sample_in_order(gpu, list(range(1, 51)), seed=3, max_tokens=80)
    b = sample_in_order(gpu, list(range(1, 51)), seed=3, max_tokens=80, batch_size=7)
    assert [t.token_ids for t in a] == [t.token_ids for t in b]


def read_shards(folder: str) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_generation_run_resumes_and_numbers_regenerate(checkpoint, tmp_path, folkrnn_main):
    out = str(tmp_path / "run")
    args = ["generate", checkpoint, "--out", out, "--num-tunes", "45", "--shard-size", "20",
            "--max-tokens", "80", "--batch-size", "8", "--quiet"]
    first = folkrnn_main(*args)
    assert first.returncode == 0, first.stderr
    shards = read_shards(os.path.join(out, "generated"))
    assert list(shards) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(os.path.join(out, "generated"))
    assert table.column("number").to_pylist() == list(range(1, 46))
    # an interrupted run: one shard missing, a leftover temporary file
    os.remove(os.path.join(out, "generated", "part-00001.parquet"))
    stamp = os.path.getmtime(os.path.join(out, "generated", "part-00000.parquet"))
    again = folkrnn_main(*args)
    assert again.returncode == 0, again.stderr
    assert read_shards(os.path.join(out, "generated")) == shards
    assert os.path.getmtime(os.path.join(out, "generated", "part-00000.parquet")) == stamp
    # tune 23 by its number alone, at another batch size
    single = folkrnn_main("generate", checkpoint, "--numbers", "23", "--max-tokens", "80")
    row = table.filter(table.column("number").to_numpy() == 23).to_pylist()[0]
    assert single.stdout.strip() == row["abc"].strip()
    assert row["checkpoint_id"] and row["title"] and row["length"] == len(row["tokens"])
    # other settings into the same folder are refused with one line
    clash = folkrnn_main(*args[:-1], "--seed", "9")
    assert clash.returncode == 2 and "other settings (seed)" in clash.stderr


def test_beam_run_writes_the_same_shards(checkpoint, tmp_path, folkrnn_main):
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    common = [checkpoint, "--num-tunes", "30", "--shard-size", "10", "--max-tokens", "60", "--quiet"]
    assert folkrnn_main("generate", *common, "--out", local, "--batch-size", "64").returncode == 0
    result = folkrnn_main("generate", *common, "--out", beam, "--batch-size", "5", "--runner", "DirectRunner",
                          "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert result.returncode == 0, result.stderr
    assert read_shards(os.path.join(local, "generated")) == read_shards(os.path.join(beam, "generated"))


@pytest.mark.parametrize("flags, message", [
    (["--meter", "5/4"], "unknown meter '5/4'; valid meters: 2/4, 3/4"),
    (["--mode", "lyd"], "unknown mode 'lyd'; valid modes: maj, min, dor, mix"),
    (["--temperature", "0"], "--temperature must be between 0.01 and 10"),
    (["--prime", "M:6/8 K:Cmaj ZZ"], "cannot read --prime"),
])
def test_generate_mistakes_are_one_line(checkpoint, tmp_path, flags, message, folkrnn_main):
    result = folkrnn_main("generate", checkpoint, "--out", str(tmp_path / "x"), "--num-tunes", "2", *flags)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_prime_from_abc_fragment():
    from folkrnn.pipeline.generate import build_prime

    assert build_prime("6/8", "dor", None) == ["M:6/8", "K:Cdor"]
    assert build_prime(None, None, "|:GAB c2") == ["*", "*", "|:", "G", "A", "B", "c", "2"]
    assert build_prime("6/8", None, "M:6/8 K:Cmaj |: G") == ["M:6/8", "K:Cmaj", "|:", "G"]
