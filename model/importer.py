"""Import the original folk-rnn v2 parameters (a Python 2 pickle) into a folkrnn checkpoint.

The file is the original train_rnn.py's metadata dict: ``param_values`` (Lasagne's
``get_all_param_values``), ``token2idx`` and ``configuration``. Layout of ``param_values``:

    [0]                  the embedding, (V x E); the 137 x 137 identity for v2 (one-hot input)
    [1 + 14 j ...]       layer j: W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xc, W_hc, b_c, W_xo, W_ho, b_o,
                         cell_init, hid_init  (input matrices n_in x H; inits 1 x H or H)
    [-2], [-1]           the output layer's W (H x V) and b (V)

The file's token order is its own ``token2idx``; ours is ``schemas.vocab.TOKENS``. Mapping
one onto the other permutes the rows of layer 1's input matrices and the columns of the
output layer. The embedding is folded into layer 1 (``emb @ W_x``), which for the identity
changes nothing and keeps any other embedding exact.

Unpickling can run arbitrary code, so the file is read by an unpickler that resolves only the
globals numpy arrays need (and ``_codecs.encode`` restricted to latin-1, which Python 3 writes
for bytes in protocol 2) and refuses every other one before anything is called.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle

import numpy as np
import torch

from model.checkpoint import save_checkpoint
from model.network import FolkRNN, ModelConfig
from pipeline.errors import UsageError
from schemas.vocab import TOKENS, VOCAB_SIZE

PARAMS_PER_LAYER = 14


class FolkRNNImportError(UsageError):
    """The file is not an original folk-rnn parameter file we can (or may) read."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray

    def latin1_encode(text, encoding="latin1", errors="strict"):
        # Python 3 pickles bytes (protocol < 3) as _codecs.encode(str, "latin1"); nothing else is needed.
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise FolkRNNImportError("the file calls _codecs.encode with an unexpected codec; refusing it")
        return text.encode("latin1", errors)

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, numpy scalars and plain containers, nothing else."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise FolkRNNImportError(
                f"refusing to unpickle: the file asks for {module}.{name}, and only numpy arrays and plain "
                "containers are allowed (an untrusted pickle can run code when loaded)") from None

    def persistent_load(self, pid):
        raise FolkRNNImportError("refusing to unpickle: the file uses persistent ids")


def read_folkrnn_pickle(path: str) -> dict:
    """The original metadata dict, read safely (``encoding="latin1"`` for Python 2 strings)."""
    if not os.path.isfile(path):
        raise FolkRNNImportError(f"no such file: {path}")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except FolkRNNImportError as err:
        raise FolkRNNImportError(f"{path}: {err}") from None
    except Exception as err:  # truncated or not a pickle at all
        raise FolkRNNImportError(f"{path} is not a readable pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict) or "param_values" not in obj or "token2idx" not in obj:
        raise FolkRNNImportError(f"{path} is a pickle but not folk-rnn's metadata (a dict with param_values "
                                 "and token2idx)")
    return obj


def _array(value, what: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise FolkRNNImportError(f"{what} is not a numeric numpy array")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if value.ndim not in ndims:
        raise FolkRNNImportError(f"{what} has shape {value.shape}, expected {ndims[0]} dimensions")
    return value.astype(np.float64)


def token_permutation(token2idx: dict) -> np.ndarray:
    """``perm[k]`` = the file's index of our token k. Refuses a vocabulary other than ours."""
    names = {str(k) for k in token2idx}
    missing, extra = sorted(set(TOKENS) - names), sorted(names - set(TOKENS))
    if missing or extra:
        raise FolkRNNImportError(
            f"the file's vocabulary is not folk-rnn v2's: missing {missing[:8]}, extra {extra[:8]} "
            f"({len(token2idx)} tokens); only the v2 model can be imported")
    perm = np.array([int(token2idx[t]) for t in TOKENS])
    if sorted(perm.tolist()) != list(range(VOCAB_SIZE)):
        raise FolkRNNImportError("the file's token2idx does not number its tokens 0..136 once each")
    return perm


def convert(metadata: dict) -> tuple[FolkRNN, dict]:
    """Our model holding the original's weights, and facts about the conversion."""
    values = list(metadata["param_values"])
    if len(values) < 3 + PARAMS_PER_LAYER or (len(values) - 3) % PARAMS_PER_LAYER:
        raise FolkRNNImportError(f"param_values has {len(values)} arrays; folk-rnn's layout has 3 + 14 per layer")
    n_layers = (len(values) - 3) // PARAMS_PER_LAYER
    perm = token_permutation(metadata["token2idx"])
    emb = _array(values[0], "param_values[0] (embedding)", 2)
    if emb.shape[0] != VOCAB_SIZE:
        raise FolkRNNImportError(f"the embedding has {emb.shape[0]} rows, expected {VOCAB_SIZE}")
    n_units = _array(values[2], "param_values[2] (W_hi)", 2).shape[0]
    config = ModelConfig(vocab_size=VOCAB_SIZE, n_layers=n_layers, n_units=n_units)
    model = FolkRNN(config)
    n_in = emb.shape[1]
    with torch.no_grad():
        for j, layer in enumerate(model.layers):
            base = 1 + PARAMS_PER_LAYER * j
            w_in, w_hid, bias = [], [], []
            for gate in range(4):  # i, f, c, o: torch's i, f, g, o
                name = f"layer {j + 1} gate {'ifco'[gate]}"
                wx = _array(values[base + 3 * gate], f"{name} W_x", 2)
                wh = _array(values[base + 3 * gate + 1], f"{name} W_h", 2)
                b = _array(values[base + 3 * gate + 2], f"{name} b", 1)
                if wx.shape != (n_in, n_units) or wh.shape != (n_units, n_units) or b.shape != (n_units,):
                    raise FolkRNNImportError(f"{name}: shapes {wx.shape}, {wh.shape}, {b.shape} do not fit "
                                             f"{n_in} inputs and {n_units} units")
                if j == 0:
                    wx = (emb @ wx)[perm]  # one-hot over the file's tokens -> our token order
                w_in.append(wx.T)
                w_hid.append(wh.T)
                bias.append(b)
            cell_init = _array(values[base + 12], f"layer {j + 1} cell_init", (1, 2)).reshape(-1)
            hid_init = _array(values[base + 13], f"layer {j + 1} hid_init", (1, 2)).reshape(-1)
            if cell_init.shape != (n_units,) or hid_init.shape != (n_units,):
                raise FolkRNNImportError(f"layer {j + 1}: initial states of size {cell_init.size}, "
                                         f"{hid_init.size}, expected {n_units}")
            layer.weight_ih.copy_(torch.from_numpy(np.concatenate(w_in, 0)))
            layer.weight_hh.copy_(torch.from_numpy(np.concatenate(w_hid, 0)))
            layer.bias.copy_(torch.from_numpy(np.concatenate(bias)))
            layer.c0.copy_(torch.from_numpy(cell_init))
            layer.h0.copy_(torch.from_numpy(hid_init))
            n_in = n_units
        w_out = _array(values[-2], "output W", 2)
        b_out = _array(values[-1], "output b", 1)
        if w_out.shape != (n_units, VOCAB_SIZE) or b_out.shape != (VOCAB_SIZE,):
            raise FolkRNNImportError(f"output layer shapes {w_out.shape}, {b_out.shape}, expected "
                                     f"({n_units}, {VOCAB_SIZE}) and ({VOCAB_SIZE},)")
        model.out.weight.copy_(torch.from_numpy(w_out[:, perm].T))
        model.out.bias.copy_(torch.from_numpy(b_out[perm]))
    model.eval()
    info = {
        "configuration": str(metadata.get("configuration", "")),
        "experiment_id": str(metadata.get("experiment_id", "")),
        "n_layers": n_layers,
        "n_units": n_units,
        "parameters": model.num_parameters(),
        "token_order_identical": bool((perm == np.arange(VOCAB_SIZE)).all()),
        "embedding_identity": bool(emb.shape[1] == VOCAB_SIZE and np.array_equal(emb, np.eye(VOCAB_SIZE))),
    }
    return model, info


def import_folkrnn(pkl_path: str, out_path: str) -> dict:
    """Convert the original parameter file to a checkpoint at ``out_path``; returns what was done."""
    metadata = read_folkrnn_pickle(pkl_path)
    model, info = convert(metadata)
    with open(pkl_path, "rb") as handle:
        source_sha256 = hashlib.sha256(handle.read()).hexdigest()
    meta = {"written_by": "folkrnn import-folkrnn", "imported_from": os.path.basename(pkl_path),
            "source_sha256": source_sha256, **{k: v for k, v in info.items()}}
    save_checkpoint(out_path, model, model.config, meta=meta)
    return {**info, "out": out_path, "source_sha256": source_sha256}
