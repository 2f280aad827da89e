"""Importing the original folk-rnn v2 parameter pickle: layout, token mapping, and refusing code."""

from __future__ import annotations

import argparse
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from folkrnn.model.checkpoint import load_checkpoint
from folkrnn.model.importer import FolkRNNImportError, import_folkrnn, read_folkrnn_pickle
from folkrnn.pipeline import importer as importer_cli
from folkrnn.schemas.vocab import TOKENS, VOCAB_SIZE

UNITS, LAYERS = 8, 3


class Py2Pickler(pickle._Pickler):
    """Writes protocol 2 the way Python 2 did: byte strings (array data, str keys) as BINSTRING."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _binstring(self, data: bytes) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    def save_bytes(self, obj: bytes) -> None:
        self._binstring(obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self._binstring(obj.encode("latin1"))
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # Python 2's numpy lived at numpy.core; numpy 2 writes numpy._core
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def original_metadata(seed: int = 0, shuffled: bool = True) -> dict:
    """A metadata dict in the original layout, random weights, a shuffled token2idx."""
    rng = np.random.default_rng(seed)
    names = list(TOKENS)
    if shuffled:
        rng.shuffle(names)
    token2idx = {name: k for k, name in enumerate(names)}
    f32 = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    values = [np.eye(VOCAB_SIZE, dtype=np.float32)]
    n_in = VOCAB_SIZE
    for j in range(LAYERS):
        for _gate in "ifco":
            values += [f32(n_in, UNITS), f32(UNITS, UNITS), f32(UNITS)]
        # cell_init, hid_init: 1 x H in some files, H in others
        values += [f32(1, UNITS), f32(1, UNITS)] if j % 2 == 0 else [f32(UNITS), f32(UNITS)]
        n_in = UNITS
    values += [f32(UNITS, VOCAB_SIZE), f32(VOCAB_SIZE)]
    return {"param_values": values, "token2idx": token2idx, "configuration": "config5",
            "experiment_id": "config5-test", "learning_rate": np.float32(0.003), "losses_train": [1.5, 1.2]}


def lasagne_forward(metadata: dict, tokens: list[str]) -> np.ndarray:
    """Probabilities after each token, in the FILE's index order, computed as Lasagne did."""
    v = [np.asarray(a, dtype=np.float64) for a in metadata["param_values"]]
    idx = [metadata["token2idx"][t] for t in tokens]
    layers = []
    for j in range(LAYERS):
        b = 1 + 14 * j
        layers.append({"W": [v[b + 3 * g] for g in range(4)], "U": [v[b + 3 * g + 1] for g in range(4)],
                       "b": [v[b + 3 * g + 2] for g in range(4)], "c": v[b + 12].reshape(-1),
                       "h": v[b + 13].reshape(-1)})
    h = [layer["h"] for layer in layers]
    c = [layer["c"] for layer in layers]
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    out = []
    for k in idx:
        x = v[0][k]  # the embedding row of the one-hot input
        for j, layer in enumerate(layers):
            pre = [x @ layer["W"][g] + h[j] @ layer["U"][g] + layer["b"][g] for g in range(4)]
            c[j] = sig(pre[1]) * c[j] + sig(pre[0]) * np.tanh(pre[2])
            h[j] = sig(pre[3]) * np.tanh(c[j])
            x = h[j]
        logits = x @ v[-2] + v[-1]
        e = np.exp(logits - logits.max())
        out.append(e / e.sum())
    return np.array(out)


@pytest.fixture
def pkl(tmp_path):
    metadata = original_metadata()
    path = tmp_path / "folkrnn_v2.pkl"
    path.write_bytes(py2_pickle(metadata))
    return str(path), metadata


def test_reads_a_python2_protocol2_pickle(pkl):
    path, metadata = pkl
    assert b"numpy.core.multiarray" in open(path, "rb").read()
    read = read_folkrnn_pickle(path)
    assert read["configuration"] == "config5" and read["token2idx"] == metadata["token2idx"]
    for a, b in zip(read["param_values"], metadata["param_values"]):
        np.testing.assert_array_equal(a, b)


def test_imported_model_gives_the_originals_probabilities_per_token(pkl, tmp_path):
    path, metadata = pkl
    out = str(tmp_path / "imported.pt")
    info = import_folkrnn(path, out)
    assert info["n_layers"] == LAYERS and info["n_units"] == UNITS and not info["token_order_identical"]
    model, payload = load_checkpoint(out)
    assert payload["meta"]["configuration"] == "config5" and payload["optimizer"] is None
    tokens = ["<s>", "M:6/8", "K:Cmaj", "|:", "G", "A", "B", "c", "2", "d", "|", "e", "/2", ":|", "</s>"]
    expected = lasagne_forward(metadata, tokens)  # file order
    with torch.no_grad():
        logits, _ = model(torch.tensor([[TOKENS.index(t) for t in tokens]]))
    ours = torch.softmax(logits[0].double(), -1).numpy()  # our order
    for name in TOKENS:
        np.testing.assert_allclose(ours[:, TOKENS.index(name)], expected[:, metadata["token2idx"][name]],
                                   atol=1e-5, rtol=0)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"param_values": [Evil()], "token2idx": {}}, protocol=2))
    with pytest.raises(FolkRNNImportError, match="refusing to unpickle.*system"):
        read_folkrnn_pickle(str(path))
    assert not marker.exists()

    sneaky = pickle.dumps({"x": b"abc"}, protocol=2).replace(b"latin1", b"rot13 ")  # other codecs: no
    (tmp_path / "codec.pkl").write_bytes(sneaky)
    with pytest.raises(FolkRNNImportError, match="codec"):
        read_folkrnn_pickle(str(tmp_path / "codec.pkl"))


def test_other_vocabularies_and_layouts_are_refused(tmp_path):
    metadata = original_metadata(shuffled=False)
    metadata["token2idx"] = {("X" if t == "z" else t): k for t, k in metadata["token2idx"].items()}
    (tmp_path / "vocab.pkl").write_bytes(py2_pickle(metadata))
    with pytest.raises(FolkRNNImportError, match="vocabulary"):
        import_folkrnn(str(tmp_path / "vocab.pkl"), str(tmp_path / "x.pt"))
    metadata = original_metadata()
    metadata["param_values"] = metadata["param_values"][:-1]
    (tmp_path / "layout.pkl").write_bytes(py2_pickle(metadata))
    with pytest.raises(FolkRNNImportError, match="14 per layer"):
        import_folkrnn(str(tmp_path / "layout.pkl"), str(tmp_path / "x.pt"))
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(FolkRNNImportError, match="not a readable pickle"):
        read_folkrnn_pickle(str(tmp_path / "junk.pkl"))
    assert not os.path.exists(tmp_path / "x.pt")


def test_cli(pkl, tmp_path, capsys):
    path, _ = pkl
    parser = argparse.ArgumentParser()
    importer_cli.add_arguments(parser)
    out = str(tmp_path / "v2.pt")
    assert importer_cli.run(parser.parse_args([path, "--out", out])) == 0
    printed = capsys.readouterr().out
    assert "3 x 8 LSTM" in printed and "mapped" in printed and os.path.exists(out)
