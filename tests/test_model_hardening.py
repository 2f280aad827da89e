"""Issue 13 (6, 8, 9): crafted checkpoints and pickles, NaN weights, and I/O failures in train and import.

Every refusal reaches the command line as one line with exit code 2. Real files and real
processes throughout: checkpoints written by torch.save and edited, pickles built instruction by
instruction, a file-size limit (RLIMIT_FSIZE binds root too, where chmod does not) and /dev/full.
"""

from __future__ import annotations

import math
import os
import pickle
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from folkrnn.model import importer
from folkrnn.model.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    make_payload,
    read_payload,
    save_checkpoint,
)
from folkrnn.model.generate import RunSettings, load_sampler
from folkrnn.model.importer import FolkRNNImportError, import_folkrnn, read_folkrnn_pickle
from folkrnn.model.network import (
    MAX_PARAMETERS,
    FolkRNN,
    ModelConfig,
    ModelConfigError,
    expected_shapes,
    parameter_count,
)
from folkrnn.model.train import TrainConfig, train
from folkrnn.pipeline import cli
from folkrnn.schemas.errors import UsageError
from tests.conftest import ROOT, folkrnn, folkrnn_env
from tests.test_importer import original_metadata, py2_pickle
from tests.test_train import synthetic_tunes, tune_set, write_text

SMALL = ModelConfig(n_layers=1, n_units=8)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, one_line(capsys.readouterr().err) if code else ""


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "good.pt")
    torch.manual_seed(0)
    save_checkpoint(path, FolkRNN(SMALL))
    return path


def crafted(good: str, path, mutate) -> str:
    """A copy of ``good`` with ``mutate(payload)`` applied, saved by torch as an attacker would."""
    payload = torch.load(good, weights_only=True)
    mutate(payload)
    torch.save(payload, str(path))
    return str(path)


def set_config(**changes):
    return lambda payload: payload["model_config"].update(changes)


# -- 6. model_config checked against the schema and limits before anything is built -----------------

CONFIGS = [
    (set_config(n_units=2**31), r"n_units must be a whole number in 1\.\.4096, got 2147483648"),
    (set_config(n_units=-5), r"n_units must be a whole number in 1\.\.4096, got -5"),
    (set_config(n_units="512"), r"n_units must be a whole number in 1\.\.4096, got '512'"),
    (set_config(n_layers=True), r"n_layers must be a whole number in 1\.\.8, got True"),
    (set_config(n_layers=100), r"n_layers must be a whole number in 1\.\.8, got 100"),
    (set_config(dropout=1.5), r"dropout must be a number in \[0, 1\), got 1\.5"),
    (set_config(dropout="0.5"), r"dropout must be a number in \[0, 1\), got '0\.5'"),
    (set_config(vocab_size=200), r"vocab_size must be 137 \(the folk-rnn v2 vocabulary\), got 200"),
    (set_config(learn_init="yes"), r"learn_init must be true or false"),
    (set_config(n_layers=8, n_units=4096), r"8x4096 has 1,009,635,465 parameters; at most 250,000,000"),
    (set_config(evil=1), r"unknown keys 'evil'"),
    (lambda p: p.update(model_config={"n_layers": 1}),
     r"model_config lacks vocab_size, n_units, dropout, learn_init"),
    (lambda p: p.update(model_config=[1, 2]), r"model_config is a list, not a dict"),
]


@pytest.mark.parametrize("mutate, message", CONFIGS)
def test_a_crafted_model_config_is_refused_in_one_line(good_checkpoint, tmp_path, mutate, message):
    path = crafted(good_checkpoint, tmp_path / "bad.pt", mutate)
    with pytest.raises(CheckpointError, match=message) as refused:
        load_checkpoint(path)
    assert str(refused.value).startswith(f"{path} is not a valid folkrnn checkpoint: ")
    assert "\n" not in str(refused.value)
    with pytest.raises(CheckpointError, match=message):
        load_sampler(path)  # what the Beam generation DoFn calls in setup()


def test_the_network_checks_its_config_before_allocating():
    # Before the fix this tried to allocate 16 TB; now it is refused before any tensor exists.
    with pytest.raises(ModelConfigError, match="n_units must be"):
        FolkRNN(ModelConfig(n_units=2**31))
    with pytest.raises(ModelConfigError, match="n_layers must be"):
        FolkRNN(ModelConfig(n_layers=0))
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


@pytest.mark.parametrize("config", [SMALL, ModelConfig(n_units=64),
                                    ModelConfig(n_layers=2, n_units=3, learn_init=False)])
def test_expected_shapes_are_the_networks(config):
    model = FolkRNN(config)
    assert expected_shapes(config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert parameter_count(config) == sum(v.numel() for v in model.state_dict().values())
    assert parameter_count(ModelConfig(n_layers=4, n_units=2048)) < MAX_PARAMETERS  # 20x v2 still fits


@pytest.mark.parametrize("command, mutate, message", [
    (["generate", "{ckpt}", "--numbers", "1"], set_config(n_units=2**31), "n_units must be"),
    (["analyze", "{ckpt}", "--out", "{tmp}/analysis"], set_config(n_units=-5), "n_units must be"),
    (["train", "{tmp}/tunes.txt", "--init", "{ckpt}", "--out", "{tmp}/run"], set_config(n_units="512"),
     "n_units must be"),
    (["generate", "{ckpt}", "--out", "{tmp}/generated", "--runner", "DirectRunner", "--num-tunes", "3"],
     lambda p: p.update(model_config={"n_layers": 1}), "model_config lacks"),
])
def test_crafted_configs_are_one_line_in_every_command(good_checkpoint, tmp_path, command, mutate, message,
                                                     folkrnn_main):
    path = crafted(good_checkpoint, tmp_path / "bad.pt", mutate)
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(10))
    argv = [arg.format(ckpt=path, tmp=tmp_path) for arg in command]
    # analyze in a process of its own: its one test of the entry point end to end (the other
    # commands have theirs below: generate, import-folkrnn and train)
    done = folkrnn(*argv) if command[0] == "analyze" else folkrnn_main(*argv)
    line = one_line(done.stderr)
    assert done.returncode == 2 and line.startswith(f"folkrnn {command[0]}: error: {path} is not a valid folkrnn "
                                                    "checkpoint: ") and message in line, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.pt", "tunes.txt"]  # no output folder was made


# -- 6. weights: names and shapes before load_state_dict, NaN and inf refused -------------------------

@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["model"].__setitem__("out.bias", torch.zeros(5)),
     r"weight out.bias has shape \(5,\), but its model_config \(1x8\) needs \(137,\)"),
    (lambda p: p["model"].__setitem__("out.bias", torch.zeros(137, dtype=torch.int64)),
     "weight out.bias is not a floating-point tensor"),
    (lambda p: p["model"].pop("layers.0.h0"),
     r"weights do not fit its model_config \(1x8\): missing \['layers.0.h0'\]"),
    (lambda p: p["model"].__setitem__("extra", torch.zeros(1)), r"unexpected \['extra'\]"),
    (lambda p: p.update(model=[1]), "holds no weights"),
    (lambda p: p["model"]["out.bias"].fill_(math.nan), "weight out.bias holds 137 NaN or infinite values"),
    (lambda p: p["model"]["layers.0.weight_hh"][3, 4].fill_(math.inf),
     "weight layers.0.weight_hh holds 1 NaN or infinite values"),
])
def test_weights_that_do_not_fit_or_are_not_finite_are_refused(good_checkpoint, tmp_path, mutate, message):
    path = crafted(good_checkpoint, tmp_path / "bad.pt", mutate)
    with pytest.raises(CheckpointError, match=message):
        read_payload(path)


def test_nan_weights_are_refused_by_generate_analyze_and_train_init(good_checkpoint, tmp_path, capsys):
    """They sampled 20 tunes of 1,000 ^g tokens, trained to a NaN loss and broke analyze's SVD."""
    path = crafted(good_checkpoint, tmp_path / "nan.pt", lambda p: p["model"]["out.bias"].fill_(math.nan))
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(10))
    for argv in (["generate", path, "--numbers", "1-20"], ["analyze", path, "--out", str(tmp_path / "a")],
                 ["train", str(tmp_path / "tunes.txt"), "--init", path, "--out", str(tmp_path / "t"), "--quiet"]):
        code, line = run_cli(capsys, *argv)
        assert code == 2 and line == (f"folkrnn {argv[0]}: error: {path}: weight out.bias holds 137 NaN or infinite "
                                      "values; the model diverged or the file is damaged: use an earlier checkpoint")
    assert sorted(os.listdir(tmp_path)) == ["nan.pt", "tunes.txt"]


def test_the_generation_dofn_refuses_a_crafted_checkpoint(good_checkpoint, tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from folkrnn.pipeline.beam.generate import GenerateTunes

    path = crafted(good_checkpoint, tmp_path / "nan.pt", lambda p: p["model"]["out.bias"].fill_(math.inf))
    settings = RunSettings(checkpoint_id="x", num_tunes=2, max_tokens=10, shard_size=2)
    with pytest.raises(Exception, match="weight out.bias holds 137 NaN or infinite values"):
        with TestPipeline(runner="DirectRunner") as pipeline:
            _ = (pipeline | beam.Create([(0, 1, 2)])
                 | GenerateTunes(path, settings, str(tmp_path / "out"), batch_size=2, device="cpu"))
    assert not os.path.exists(tmp_path / "out" / "generated")


def test_training_that_diverges_stops_before_saving_nan(tmp_path):
    cfg = TrainConfig(batch_size=8, max_epochs=1, max_steps=5, checkpoint_every=1, device="cpu", lr=1e30)
    with pytest.raises(UsageError, match=r"training diverged at step \d \(loss (nan|inf)\)"):
        train(tune_set(40), str(tmp_path), SMALL, cfg, progress=False, log=lambda *a: None)
    read_payload(str(tmp_path / "checkpoints" / "last.pt"))  # the last checkpoint is finite


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["train_state"]["train_config"].update(batch_size="8"),
     "train_config has batch_size of type str, not int"),
    (lambda p: p.update(optimizer={"state": 1}), "cannot be restored"),
    (lambda p: p["train_state"].pop("epoch"), "KeyError: 'epoch'"),
])
def test_a_damaged_training_state_is_one_line_on_resume(tmp_path, capsys, mutate, message):
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(20))
    common = [str(tmp_path / "tunes.txt"), "--layers", "1", "--units", "8", "--batch-size", "8", "--quiet"]
    assert cli.main(["train", *common, "--out", str(tmp_path / "run"), "--max-steps", "2"]) == 0
    last = str(tmp_path / "run" / "checkpoints" / "last.pt")
    crafted(last, last, mutate)
    code, line = run_cli(capsys, "train", *common, "--out", str(tmp_path / "run"), "--resume", "--max-steps", "4")
    assert code == 2 and line.startswith(f"folkrnn train: error: {last}: its training state cannot be restored")
    assert message in line


def with_data_pickle(good: str, path, ops: bytes) -> str:
    """``good`` with its data.pkl (the pickle inside torch's zip) replaced by ``ops``."""
    import zipfile

    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            target.writestr(info, ops if info.filename.endswith("/data.pkl") else source.read(info))
    return str(path)


def test_a_checkpoint_whose_pickle_would_hash_forever_is_refused(good_checkpoint, tmp_path):
    """A 1 KB .pt with a nested tuple as a dict key hung torch.load(weights_only=True) itself."""
    memo = 1000
    ops = b"\x80\x02" + pickle.EMPTY_DICT + pickle.MARK
    ops += pickle.EMPTY_TUPLE + pickle.LONG_BINPUT + struct.pack("<I", memo)
    for level in range(1, 41):  # no POP: torch's unpickler lacks it, so the levels stay on the stack
        ops += (pickle.LONG_BINGET + struct.pack("<I", memo + level - 1)) * 2 + pickle.TUPLE2
        ops += pickle.LONG_BINPUT + struct.pack("<I", memo + level)
    ops += pickle.BININT1 + b"\x01" + pickle.SETITEMS + pickle.STOP
    path = with_data_pickle(good_checkpoint, tmp_path / "tuple-key.pt", ops)
    done = folkrnn("generate", path, "--numbers", "1", timeout=20)
    assert done.returncode == 2 and one_line(done.stderr) == (
        f"folkrnn generate: error: {path} is not a folkrnn checkpoint: refusing to load it: a dict key is a tuple, "
        "not a name or number")
    laughing = with_data_pickle(good_checkpoint, tmp_path / "laughs.pt", b"\x80\x02" + laughs() + pickle.STOP)
    with pytest.raises(CheckpointError, match="expand to more than 5,000,000 elements"):
        read_payload(laughing)


# -- 9. a file that is not a checkpoint: our words, not torch's -----------------------------------------

def test_model_card_is_not_a_folkrnn_checkpoint(folkrnn_main, monkeypatch):
    monkeypatch.chdir(ROOT)
    done = folkrnn_main("generate", "model/MODEL.md", "--numbers", "1")
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        "folkrnn generate: error: model/MODEL.md is not a folkrnn checkpoint: it is not a file torch saved, or it "
        "is damaged or cut short; checkpoints are written by `folkrnn train` or `folkrnn import-folkrnn`, and "
        "model/demo.pt and model/base.pt are two")


def test_other_unreadable_files_name_what_is_wrong(good_checkpoint, tmp_path):
    import argparse

    torch.save({"format": "folkrnn-checkpoint", "obj": argparse.Namespace()}, str(tmp_path / "object.pt"))
    (tmp_path / "cut.pt").write_bytes(open(good_checkpoint, "rb").read()[:2000])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    for name, why in (("object.pt", r"it holds a pickled Python object \(argparse\.Namespace\)"),
                      ("cut.pt", "it is not a file torch saved, or it is damaged or cut short"),
                      ("empty.pt", "it is not a file torch saved"), ("legacy.pt", "it is not a file torch saved")):
        with pytest.raises(CheckpointError, match=rf"is not a folkrnn checkpoint: {why}") as refused:
            read_payload(str(tmp_path / name))
        assert "WeightsUnpickler" not in str(refused.value) and "file an issue" not in str(refused.value)


# -- 6. the importer: bounded reading, no unbounded str(), NaN and oversized models refused -------------

def laughs(levels: int = 30, width: int = 10, memo: int = 100_000) -> bytes:
    """Pickle instructions for a list of ``width`` references to a list of ``width`` references ...,
    ``levels`` deep: a few hundred bytes that str() expands to width**levels elements."""
    ops = pickle.EMPTY_LIST + pickle.LONG_BINPUT + struct.pack("<I", memo)
    for level in range(1, levels + 1):
        ops += pickle.POP + pickle.MARK + (pickle.LONG_BINGET + struct.pack("<I", memo + level - 1)) * width
        ops += pickle.LIST + pickle.LONG_BINPUT + struct.pack("<I", memo + level)
    return ops


def nested_tuple_key(levels: int = 40, memo: int = 100_000) -> bytes:
    """A dict {t: 1} where t = (t', t'), t' = (t'', t'') ...: hashing t walks 2**levels tuples."""
    ops = pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.LONG_BINPUT + struct.pack("<I", memo)
    for level in range(1, levels + 1):
        ops += pickle.POP + (pickle.LONG_BINGET + struct.pack("<I", memo + level - 1)) * 2 + pickle.TUPLE2
        ops += pickle.LONG_BINPUT + struct.pack("<I", memo + level)
    return ops + pickle.BININT1 + b"\x01" + pickle.SETITEM


def with_configuration(ops: bytes) -> bytes:
    """folk-rnn's metadata in Python 2's protocol 2, its configuration replaced by ``ops``."""
    metadata = original_metadata()
    metadata["configuration"] = "@CONFIGURATION@"
    data = py2_pickle(metadata)
    name = pickle.SHORT_BINSTRING + bytes([15]) + b"@CONFIGURATION@"
    assert data.count(name) == 1
    return data.replace(name, ops)


def test_a_billion_laughs_import_fails_fast_in_one_line(tmp_path):
    """The 114 KB pickle spun at 100% CPU in str(configuration); now refused as it is read."""
    path = tmp_path / "laughs.pkl"
    path.write_bytes(with_configuration(laughs()))
    assert 100_000 < path.stat().st_size < 120_000
    done = folkrnn("import-folkrnn", str(path), "--out", str(tmp_path / "v2.pt"), timeout=60)  # a hang guard (it used to spin for ever), generous for a loaded machine
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        f"folkrnn import-folkrnn: error: {path}: refusing to unpickle: its objects expand to more than 5,000,000 "
        "elements through shared references (a 'billion laughs'); folk-rnn's file holds only numpy arrays, numbers "
        "and names")
    assert sorted(os.listdir(tmp_path)) == ["laughs.pkl"]


READ = "import sys\nfrom folkrnn.model.importer import read_folkrnn_pickle\nread_folkrnn_pickle(sys.argv[1])\n"


def test_a_nested_tuple_as_dict_key_is_refused_before_it_is_hashed(tmp_path):
    path = tmp_path / "tuple-key.pkl"
    path.write_bytes(with_configuration(nested_tuple_key()))
    done = subprocess.run([sys.executable, "-c", READ, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=20, env=folkrnn_env())
    assert done.returncode == 1 and ("refusing to unpickle: a dict key is a tuple, not a name or number"
                                     in done.stderr), done.stderr


def test_the_unpickler_builds_only_plain_arrays(tmp_path):
    metadata = original_metadata()
    metadata["param_values"][0] = np.array([[None]], dtype=object)
    (tmp_path / "object.pkl").write_bytes(py2_pickle(metadata))
    with pytest.raises(FolkRNNImportError, match=r"an array of dtype 'O8' \(kind 'O'\) could hold Python objects"):
        read_folkrnn_pickle(str(tmp_path / "object.pkl"))
    (tmp_path / "set.pkl").write_bytes(pickle.dumps({"param_values": [], "token2idx": {1, 2}}, protocol=4))
    with pytest.raises(FolkRNNImportError, match="builds a set"):
        read_folkrnn_pickle(str(tmp_path / "set.pkl"))


def test_pickle_size_and_instructions_are_bounded(tmp_path, monkeypatch):
    path = tmp_path / "v2.pkl"
    path.write_bytes(py2_pickle(original_metadata()))
    size = path.stat().st_size
    monkeypatch.setattr(importer, "MAX_PICKLE_BYTES", size - 1)
    with pytest.raises(FolkRNNImportError, match=rf"is {size:,} bytes; a folk-rnn parameter file is at most"):
        read_folkrnn_pickle(str(path))
    monkeypatch.setattr(importer, "MAX_PICKLE_BYTES", size)
    monkeypatch.setattr(importer, "MAX_PICKLE_OPS", 100)
    with pytest.raises(FolkRNNImportError, match="more than 100 pickle instructions"):
        read_folkrnn_pickle(str(path))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_infinite_arrays_are_refused_on_import(tmp_path, value):
    metadata = original_metadata()
    metadata["param_values"][4][2, 3] = value  # layer 1, gate f, W_x
    (tmp_path / "nan.pkl").write_bytes(py2_pickle(metadata))
    with pytest.raises(FolkRNNImportError, match="layer 1 gate f W_x holds 1 NaN or infinite values"):
        import_folkrnn(str(tmp_path / "nan.pkl"), str(tmp_path / "v2.pt"))
    assert not os.path.exists(tmp_path / "v2.pt")


def test_an_oversized_model_in_a_pickle_is_refused_before_it_is_built(tmp_path):
    metadata = original_metadata()
    metadata["param_values"][2] = np.zeros((10**9, 0), dtype=np.float32)  # W_hi: no bytes, a billion units
    (tmp_path / "huge.pkl").write_bytes(py2_pickle(metadata))
    assert (tmp_path / "huge.pkl").stat().st_size < 200_000
    with pytest.raises(FolkRNNImportError, match=r"model does not fit: model_config: n_units must be a whole number "
                                                 r"in 1\.\.4096, got 1000000000"):
        import_folkrnn(str(tmp_path / "huge.pkl"), str(tmp_path / "v2.pt"))
    metadata = original_metadata()
    metadata["param_values"][1:1] = metadata["param_values"][1:15] * 8  # 11 layers
    (tmp_path / "deep.pkl").write_bytes(py2_pickle(metadata))
    with pytest.raises(FolkRNNImportError, match=r"has 157 arrays; folk-rnn's layout has 3 \+ 14 per layer \(1 to 8"):
        import_folkrnn(str(tmp_path / "deep.pkl"), str(tmp_path / "v2.pt"))


# -- 8. I/O failures of import and train: one line naming the path and the cause -----------------------

@pytest.fixture
def v2_pickle(tmp_path) -> str:
    path = tmp_path / "v2.pkl"
    path.write_bytes(py2_pickle(original_metadata()))
    return str(path)


@pytest.fixture
def full_device(tmp_path) -> str:
    """A full disk: our own node of /dev/full's device where we may make one (as root), so that a
    regression renames over a node in tmp_path and not over the machine's /dev/full."""
    path = str(tmp_path / "full")
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        return "/dev/full"
    return path


def test_import_onto_a_full_disk_is_one_line_and_the_device_stays(v2_pickle, full_device, capsys):
    code, line = run_cli(capsys, "import-folkrnn", v2_pickle, "--out", full_device)
    assert code == 2 and line == (f"folkrnn import-folkrnn: error: {full_device}: No space left on device (free "
                                  "some space or choose another disk)")
    assert stat.S_ISCHR(os.stat(full_device).st_mode)  # it was renamed over, as root, before the fix
    folder, name = os.path.split(full_device)
    assert not [n for n in os.listdir(folder) if n.startswith(f".{name}")]


def test_import_beyond_the_file_size_limit_names_the_checkpoint(v2_pickle, tmp_path):
    out = str(tmp_path / "v2.pt")
    done = folkrnn("import-folkrnn", v2_pickle, "--out", out, max_file_size=4000)
    assert done.returncode == 2 and one_line(done.stderr) == f"folkrnn import-folkrnn: error: {out}: File too large"
    assert sorted(os.listdir(tmp_path)) == ["v2.pkl"]  # no temporary file left


def test_import_out_paths_that_cannot_be_written_are_refused_first(v2_pickle, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    code, line = run_cli(capsys, "import-folkrnn", v2_pickle, "--out", str(tmp_path / "a-file" / "v2.pt"))
    assert code == 2 and line == (f"folkrnn import-folkrnn: error: cannot write the checkpoint into "
                                  f"{tmp_path}/a-file: {tmp_path}/a-file is not a folder (choose another path)")
    code, line = run_cli(capsys, "import-folkrnn", v2_pickle, "--out", str(tmp_path))
    assert code == 2 and f"--out {tmp_path} is a folder; give the checkpoint's file name" in line


@pytest.mark.parametrize("limit, victim", [(100, "metrics.csv"), (3000, "checkpoints/last.pt")])
def test_train_beyond_the_file_size_limit_names_the_file(tmp_path, limit, victim):
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(20))
    out = tmp_path / "run"
    done = folkrnn("train", str(tmp_path / "tunes.txt"), "--out", str(out), "--layers", "1", "--units", "8",
                   "--batch-size", "8", "--max-epochs", "1", "--quiet", max_file_size=limit)
    assert done.returncode == 2 and one_line(done.stderr) == f"folkrnn train: error: {out}/{victim}: File too large"
    left = [os.path.join(d, n) for d, _, names in os.walk(out) for n in names]
    assert not [n for n in left if os.path.basename(n).startswith(".")]  # no temporary file left


def test_train_into_a_file_is_refused_before_any_work(tmp_path, capsys):
    write_text(str(tmp_path / "tunes.txt"), synthetic_tunes(20))
    code, line = run_cli(capsys, "train", str(tmp_path / "tunes.txt"), "--out", str(tmp_path / "tunes.txt" / "run"))
    assert code == 2 and line == (f"folkrnn train: error: cannot write the training run into "
                                  f"{tmp_path}/tunes.txt/run: {tmp_path}/tunes.txt is not a folder (choose another "
                                  "path)")
    code, line = run_cli(capsys, "train", str(tmp_path / "tunes.txt"), "--units", "5000")
    assert code == 2 and line == "folkrnn train: error: --units must be at most 4096, got 5000"


def test_atomic_save_goes_through_atomic_write(tmp_path, full_device):
    model = FolkRNN(SMALL)
    path = str(tmp_path / "c.pt")
    atomic_save(make_payload(model), path)
    atomic_save(make_payload(model), path)  # replaces
    assert [n for n in os.listdir(tmp_path) if n != "full"] == ["c.pt"]  # no temporary file left
    read_payload(path)
    with pytest.raises(OSError) as failed:
        atomic_save(make_payload(model), full_device)
    assert failed.value.filename == full_device and failed.value.strerror == "No space left on device"
