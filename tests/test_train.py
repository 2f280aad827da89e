"""Training: data, batching and masking, checkpoints, exact resume, the CLI module."""

from __future__ import annotations

import argparse
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import folkrnn.model.devices as devices
import folkrnn.model.train as train_module
from folkrnn.model.checkpoint import (
    CheckpointError,
    check_plain,
    checkpoint_id,
    load_checkpoint,
    save_checkpoint,
)
from folkrnn.model.data import (
    IGNORE,
    TuneSet,
    epoch_batches,
    load_tunes,
    make_batch,
    read_folkrnn_text,
    split_by_hash,
)
from folkrnn.model.devices import resolve_device
from folkrnn.model.network import FolkRNN, ModelConfig
from folkrnn.model.optim import LasagneRMSprop, lr_at_epoch
from folkrnn.model.train import TrainConfig, batch_loss, train
from folkrnn.pipeline import cli as folkrnn_cli
from folkrnn.pipeline import train as train_cli
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.tables import TUNES
from folkrnn.schemas.vocab import END_ID, START_ID, TOKENS, encode
from tests.conftest import small_model

TINY = ModelConfig(n_layers=2, n_units=8, dropout=0.5)
BODY = ["|:", "c", "2", "d", "e", "|", "f", "g", "a", "b", ":|", "A", "B", "/2", "G", "E"]


def synthetic_tunes(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    meters, modes = ["M:4/4", "M:6/8", "M:3/4"], ["K:Cmaj", "K:Cmin", "K:Cdor"]
    return [[meters[k % 3], modes[(k // 3) % 3]] + list(rng.choice(BODY, size=int(rng.integers(3, 25))))
            for k in range(n)]


def write_text(path: str, tunes: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(f"{t[0]}\n{t[1]}\n{' '.join(t[2:])}" for t in tunes) + "\n")


def tune_set(n: int = 40, seed: int = 0) -> TuneSet:
    tunes = [np.array(encode(t)) for t in synthetic_tunes(n, seed)]
    return TuneSet(train=tunes[: n - 6], valid=tunes[n - 6 :], source="synthetic")


# ---------------------------------------------------------------- data


def test_folkrnn_text_and_deterministic_split(tmp_path):
    tunes = synthetic_tunes(30)
    path = tmp_path / "tunes.txt"
    write_text(str(path), tunes)
    read = read_folkrnn_text(str(path))
    assert [list(t) for t in read] == [encode(t) for t in tunes]
    train, valid = split_by_hash(read, 0.1)
    assert len(valid) == 3 and len(train) == 27
    # the split depends on the tunes, not on their order in the file
    write_text(str(tmp_path / "reversed.txt"), tunes[::-1])
    again = load_tunes(str(tmp_path / "reversed.txt"), 0.1)
    assert sorted(map(tuple, again.valid)) == sorted(map(tuple, valid))


def test_text_with_unknown_token_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("M:4/4\nK:Cmaj\nc d H e\n")
    with pytest.raises(UsageError, match="tune 1 .* H"):
        read_folkrnn_text(str(path))


def test_parquet_of_the_ingest(tmp_path):
    tunes = synthetic_tunes(12)
    rows = []
    for k, tokens in enumerate(tunes):
        rows.append({
            "id": f"c/f/{k}", "source": "f.abc", "collection": "c", "position": k, "title": f"tune {k}",
            "original_meter": tokens[0][2:], "original_key": "G", "meter_mapped": False, "transpose": -7,
            "meter": tokens[0][2:], "mode": tokens[1][3:], "tokens": tokens, "token_ids": encode(tokens),
            "length": len(tokens), "content_hash": f"{k:040x}", "split": "valid" if k % 4 == 0 else "train",
            "encoding": "utf-8", "removed": [],
        })
    os.makedirs(tmp_path / "ingest" / "tunes")
    pq.write_table(pa.Table.from_pylist(rows, schema=TUNES), tmp_path / "ingest" / "tunes" / "part-00000.parquet")
    data = load_tunes(str(tmp_path / "ingest"))  # the ingest's --out folder
    assert len(data.valid) == 3 and len(data.train) == 9
    assert [list(t) for t in data.train] == [encode(t) for k, t in enumerate(tunes) if k % 4]


def test_batches_cover_every_tune_once_grouped_by_length_and_reproducible():
    lengths = np.random.default_rng(0).integers(5, 300, size=203)
    batches = epoch_batches(lengths, 16, seed=7, epoch=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(203))
    assert sorted(len(b) for b in batches) == [203 % 16] + [16] * (203 // 16)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 30  # similar lengths together (random batches would spread ~280)
    again = epoch_batches(lengths, 16, seed=7, epoch=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = epoch_batches(lengths, 16, seed=7, epoch=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_batch_layout():
    tunes = [np.array([1, 2, 3]), np.array([4])]
    inputs, targets = make_batch(tunes, [0, 1])
    assert inputs.tolist() == [[START_ID, 1, 2, 3], [START_ID, 4, END_ID, END_ID]]
    assert targets.tolist() == [[1, 2, 3, END_ID], [4, END_ID, IGNORE, IGNORE]]


def test_padding_never_changes_the_loss_or_its_gradient():
    model = small_model(0, layers=2, units=8, dropout=0.0, noise=0, training=True)  # torch's initialisation
    tunes = [np.array(encode(t)) for t in synthetic_tunes(3, seed=5)]

    def loss_and_grads(inputs, targets):
        model.zero_grad()
        total, n = batch_loss(model, torch.from_numpy(inputs), torch.from_numpy(targets))
        (total / n).backward()
        return float(total), n, [p.grad.clone() for p in model.parameters()]

    inputs, targets = make_batch(tunes, [0, 1, 2])
    base = loss_and_grads(inputs, targets)
    # 50 more padded steps, with arbitrary ids in the padded inputs
    pad_in = np.random.default_rng(0).integers(0, len(TOKENS), size=(3, 50))
    padded = loss_and_grads(np.concatenate([inputs, pad_in], 1),
                            np.concatenate([targets, np.full((3, 50), IGNORE)], 1))
    assert padded[1] == base[1] == sum(len(t) + 1 for t in tunes)
    assert padded[0] == pytest.approx(base[0], rel=1e-6)
    for a, b in zip(base[2], padded[2]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    # and each tune alone gives the same summed loss as inside the padded batch
    alone = sum(loss_and_grads(*make_batch(tunes, [k]))[0] for k in range(3))
    assert alone == pytest.approx(base[0], rel=1e-5)


# ---------------------------------------------------------------- optimisation recipe


def test_learning_rate_schedule_is_the_originals():
    cfg = TrainConfig()
    assert [lr_at_epoch(cfg, e) for e in (0, 20, 21)] == [0.003] * 3
    assert lr_at_epoch(cfg, 22) == pytest.approx(0.003 * 0.97)
    assert lr_at_epoch(cfg, 99) == pytest.approx(0.003 * 0.97 ** 78)


def test_lasagne_rmsprop_puts_eps_inside_the_square_root():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = LasagneRMSprop([p], lr=0.1, rho=0.9, eps=1e-2)
    p.grad = torch.tensor([0.5, 0.01])
    opt.step()
    accu = 0.1 * p.grad**2
    expected = torch.tensor([1.0, -2.0]) - 0.1 * p.grad / torch.sqrt(accu + 1e-2)
    torch.testing.assert_close(p.detach(), expected)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_weights_only_and_atomic(tmp_path):
    model = FolkRNN(TINY)
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, model, TINY, train_state={"step": 3, "rng": torch.get_rng_state()})
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind
    payload = torch.load(path, weights_only=True)
    assert payload["vocabulary"] == list(TOKENS) and payload["model_config"]["n_units"] == 8
    loaded, payload = load_checkpoint(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert len(checkpoint_id(path)) == 16 and checkpoint_id(path) == checkpoint_id(path)
    with pytest.raises(TypeError):
        check_plain({"bad": argparse.Namespace()})


def test_checkpoint_of_another_vocabulary_is_refused(tmp_path):
    model = FolkRNN(TINY)
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, model)
    payload = torch.load(path, weights_only=True)
    payload["vocabulary"] = list(reversed(TOKENS))
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    torch.save({"format": "folkrnn-checkpoint", "code": argparse.Namespace(x=1)}, path)  # a pickled class
    with pytest.raises(CheckpointError, match=r"is not a folkrnn checkpoint: it holds a pickled Python object "
                                              r"\(argparse\.Namespace\)"):
        load_checkpoint(path)


# ---------------------------------------------------------------- training runs


def run_train(data, out, max_steps, resume=None, clip_mode="norm", checkpoint_every=0):
    cfg = TrainConfig(batch_size=8, max_epochs=3, max_steps=max_steps, checkpoint_every=checkpoint_every,
                      device="cpu", clip_mode=clip_mode, seed=3)
    return train(data, str(out), TINY, cfg, resume=resume, progress=False, log=lambda *a: None)


def weights(path):
    model, _ = load_checkpoint(path)
    return [t.clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("clip_mode", ["norm", "elementwise"])
def test_resume_continues_exactly(tmp_path, clip_mode):
    data = tune_set(40)  # 34 train tunes: 5 batches an epoch; 7 steps = mid second epoch
    straight = run_train(data, tmp_path / "a", 12, clip_mode=clip_mode)
    assert straight["epoch"] == 2 and straight["batch_index"] == 2
    first = run_train(data, tmp_path / "b", 7, clip_mode=clip_mode)
    assert first["step"] == 7
    resumed = run_train(data, tmp_path / "b", 12, resume=first["last"], clip_mode=clip_mode)
    assert resumed["step"] == 12
    for a, b in zip(weights(straight["last"]), weights(resumed["last"])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    rows = lambda p: [line.split(",")[:4] for line in open(p)]  # noqa: E731
    assert rows(straight["metrics"]) == rows(resumed["metrics"])
    assert os.path.getsize(straight["plot"]) > 1000


def test_interrupt_checkpoints_between_steps_and_resumes(tmp_path, monkeypatch):
    data = tune_set(40)
    straight = run_train(data, tmp_path / "a", 8)
    calls = {"n": 0}
    real_make_batch = train_module.make_batch

    def make_batch_then_ctrl_c(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # a Ctrl-C arriving during step 4
            os.kill(os.getpid(), signal.SIGINT)
        return real_make_batch(*args)

    monkeypatch.setattr(train_module, "make_batch", make_batch_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_train(data, tmp_path / "b", 8)
    monkeypatch.setattr(train_module, "make_batch", real_make_batch)
    last = str(tmp_path / "b" / "checkpoints" / "last.pt")
    assert torch.load(last, weights_only=True)["train_state"]["step"] == 4  # step 4 finished, then stopped
    resumed = run_train(data, tmp_path / "b", 8, resume=last)
    for a, b in zip(weights(straight["last"]), weights(resumed["last"])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_resume_refuses_other_data(tmp_path):
    first = run_train(tune_set(40), tmp_path / "a", 2)
    with pytest.raises(UsageError, match="differ"):
        run_train(tune_set(40, seed=1), tmp_path / "a", 4, resume=first["last"])


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return train_cli.run(parser.parse_args(argv))


def test_cli_quick_run_writes_checkpoints_metrics_and_plot(tmp_path, capsys):
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(40))
    out = tmp_path / "run"
    common = [str(tmp_path / "tunes.txt"), "--out", str(out), "--layers", "1", "--units", "8",
              "--batch-size", "8", "--quiet"]
    assert cli(common + ["--max-epochs", "2"]) == 0
    assert {"last.pt", "best.pt"} <= set(os.listdir(out / "checkpoints"))
    header = open(out / "metrics.csv").readline().strip().split(",")
    assert header[:4] == ["step", "epoch", "split", "loss"]
    assert open(out / "loss.png", "rb").read(4) == b"\x89PNG"
    assert "best valid" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--resume"):
        cli(common + ["--max-epochs", "3"])
    with pytest.raises(UsageError, match="cannot change"):
        cli(common[:-1] + ["--units", "16", "--resume"])
    assert cli(common + ["--max-epochs", "3", "--resume"]) == 0
    _, payload = load_checkpoint(str(out / "checkpoints" / "last.pt"))
    assert payload["train_state"]["epoch"] == 3 and payload["model_config"]["n_layers"] == 1



def test_init_fine_tunes_from_a_sampling_only_export(tmp_path):
    data = tune_set(40)
    first = run_train(data, tmp_path / "a", 5)
    trained, _ = load_checkpoint(first["last"])
    export = str(tmp_path / "export.pt")
    save_checkpoint(export, trained, trained.config)  # weights only, no optimizer: cannot be resumed
    with pytest.raises(CheckpointError, match="no training state"):
        run_train(data, tmp_path / "b", 6, resume=export)
    cfg = TrainConfig(batch_size=8, max_epochs=3, max_steps=0, checkpoint_every=0, device="cpu", seed=3)
    # one step at a vanishing learning rate: the new run starts from exactly the exported weights
    start = train(data, str(tmp_path / "c"), TINY, TrainConfig(**{**cfg.__dict__, "max_steps": 1, "lr": 1e-30}),
                  progress=False, log=lambda *a: None, init=export)
    for a, b in zip(weights(start["last"]), weights(first["last"])):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    tuned = train(data, str(tmp_path / "d"), TINY, cfg, progress=False, log=lambda *a: None, init=export)
    payload = torch.load(tuned["last"], weights_only=True)
    assert payload["train_state"]["init"]["checkpoint_id"] == checkpoint_id(export)
    assert payload["meta"]["initialised_from"] == checkpoint_id(export)
    assert payload["train_state"]["epoch"] == 3 and tuned["best_valid_loss"] is not None
    assert any((a - b).abs().max() > 0 for a, b in zip(weights(tuned["last"]), weights(first["last"])))
    other = ModelConfig(n_layers=TINY.n_layers, n_units=TINY.n_units * 2)
    with pytest.raises(UsageError, match="--init keeps|asks for"):
        train(data, str(tmp_path / "e"), other, cfg, progress=False, log=lambda *a: None, init=export)


def test_cli_init_keeps_the_checkpoint_sizes(tmp_path):
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(40))
    common = [str(tmp_path / "tunes.txt"), "--layers", "1", "--units", "8", "--batch-size", "8", "--quiet"]
    assert cli(common + ["--out", str(tmp_path / "a"), "--max-epochs", "1"]) == 0
    start = str(tmp_path / "a" / "checkpoints" / "last.pt")
    with pytest.raises(UsageError, match="--init keeps"):
        cli([str(tmp_path / "tunes.txt"), "--out", str(tmp_path / "b"), "--init", start, "--units", "16"])
    with pytest.raises(UsageError, match="give one of them"):
        cli(common + ["--out", str(tmp_path / "a"), "--init", start, "--resume"])
    assert cli([str(tmp_path / "tunes.txt"), "--out", str(tmp_path / "c"), "--init", start, "--dropout", "0.1",
                "--batch-size", "8", "--max-epochs", "1", "--quiet"]) == 0
    _, payload = load_checkpoint(str(tmp_path / "c" / "checkpoints" / "last.pt"))
    assert payload["model_config"]["n_units"] == 8 and payload["model_config"]["dropout"] == 0.1


# ---------------------------------------------------------------- devices and the clip switch (issue 14)

DEMO = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model", "demo.pt")


def no_cuda(monkeypatch) -> None:
    """This machine as one without CUDA, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def error_line(capsys, *argv: str) -> str:
    assert folkrnn_cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_one_device_resolver_refuses_in_one_line(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    # the Python API names the parameter; the CLI names its flag (test below)
    with pytest.raises(UsageError, match="^device 'bogus' is not a device: use auto, cpu, cuda or cuda:N$"):
        resolve_device("bogus")
    no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="no CUDA device is available; use device cpu$"):
        resolve_device("cuda:1")


def test_train_and_generate_resolve_devices_alike(tmp_path, capsys, monkeypatch):
    """Before, `generate --device cuda` without CUDA and `train --device bogus` were 'unexpected' errors."""
    no_cuda(monkeypatch)
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(20))
    for argv in (["train", str(tmp_path / "tunes.txt"), "--out", str(tmp_path / "t"), "--device", "cuda"],
                 ["generate", DEMO, "--num-tunes", "1", "--out", str(tmp_path / "g"), "--device", "cuda"]):
        assert error_line(capsys, *argv) == (f"folkrnn {argv[0]}: error: --device cuda was asked for but no CUDA "
                                             "device is available; use --device cpu")
    assert error_line(capsys, "train", str(tmp_path / "tunes.txt"), "--out", str(tmp_path / "t"), "--device",
                      "bogus").endswith("--device 'bogus' is not a device: use auto, cpu, cuda or cuda:N")


def test_bf16_on_a_cpu_without_it_is_refused_by_generate_and_analyze(tmp_path, capsys, monkeypatch):
    no_cuda(monkeypatch)
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    refusal = "error: this CPU has no bf16 instructions (avx512_bf16/amx_bf16); use --dtype fp32"
    for device in ("cpu", "auto"):
        assert error_line(capsys, "generate", DEMO, "--num-tunes", "1", "--out", str(tmp_path / "g"), "--dtype",
                          "bf16", "--device", device) == f"folkrnn generate: {refusal}"
    assert error_line(capsys, "analyze", DEMO, "--out", str(tmp_path / "a"), "--dtype",
                      "bf16") == f"folkrnn analyze: {refusal}"
    # --device cuda may be a Beam worker's GPU: not refused for bf16 (here it then has no CUDA, locally)
    assert error_line(capsys, "generate", DEMO, "--num-tunes", "1", "--out", str(tmp_path / "g"), "--dtype", "bf16",
                      "--device", "cuda").endswith("no CUDA device is available; use --device cpu")


def test_elementwise_clipping_is_chosen_by_the_train_config_not_set_on_the_model():
    assert TrainConfig().gate_clip == 0.0
    assert TrainConfig(clip_mode="elementwise", clip=3.0).gate_clip == 3.0
    torch.manual_seed(0)
    model = FolkRNN(TINY)
    assert not hasattr(model, "elementwise_clip")  # the switch travels with the forward call
    inputs, targets = make_batch([np.array(encode(t)) for t in synthetic_tunes(4)], [0, 1, 2, 3])
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    grads = {}
    for clip in (0.0, 1e-4):
        model.zero_grad()
        total, _ = batch_loss(model.eval(), inputs, targets, clip)
        total.backward()
        grads[clip] = model.layers[-1].bias.grad.clone()
    assert grads[1e-4].abs().max() < grads[0.0].abs().max()  # a tiny threshold clips the gates' gradients
