"""Import the original folk-rnn v2 parameters (a Python 2 pickle) into a folkrnn checkpoint.

The file is the original train_rnn.py's metadata dict: ``param_values`` (Lasagne's
``get_all_param_values``), ``token2idx`` and ``configuration``. Layout of ``param_values``:

    [0]                  the embedding, (V x E); the 137 x 137 identity for v2 (one-hot input)
    [1 + 14 j ...]       layer j: W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xc, W_hc, b_c, W_xo, W_ho, b_o,
                         cell_init, hid_init  (input matrices n_in x H; inits 1 x H or H)
    [-2], [-1]           the output layer's W (H x V) and b (V)

The file's token order is its own ``token2idx``; ours is ``folkrnn.schemas.vocab.TOKENS``. Mapping
one onto the other permutes the rows of layer 1's input matrices and the columns of the
output layer. The embedding is folded into layer 1 (``emb @ W_x``), which for the identity
changes nothing and keeps any other embedding exact.

Unpickling can run arbitrary code, so the file is read by an unpickler that resolves only the
globals numpy arrays need (and ``_codecs.encode`` restricted to latin-1, which Python 3 writes
for bytes in protocol 2) and refuses every other one before anything is called. Those globals
are called only with the argument types a numpy array needs (``np.dtype("f4")``, never a
crafted list whose error message would print it).

A small pickle can still cost unbounded time (a "billion laughs", a nested tuple as a dict key):
model/safe_pickle.py bounds the file's instructions and what they may build, the file's size is
bounded here, and nothing untrusted is ``str()``-ed without a bound.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re

import numpy as np
import torch

from folkrnn.model.checkpoint import check_folder, save_checkpoint
from folkrnn.model.network import MAX_LAYERS, FolkRNN, ModelConfig, ModelConfigError
from folkrnn.model.safe_pickle import SCALARS, BoundedUnpickler, PickleRefused, check_expansion, counted
from folkrnn.schemas.errors import UsageError, setting
from folkrnn.schemas.vocab import TOKENS, VOCAB_SIZE

PARAMS_PER_LAYER = 14
# folk-rnn v2's file is about 22 MB; ten times that is still a model MAX_PARAMETERS allows.
MAX_PICKLE_BYTES = 256 * 1024 * 1024
# Pickle instructions: an array is a handful, a number in a loss list about eight (30,000 losses: 240,000).
MAX_PICKLE_OPS = 5_000_000
DTYPE_KINDS = "fiubSU"  # numbers, booleans and fixed-size text: no Python objects, no records


class FolkRNNImportError(UsageError):
    """The file is not an original folk-rnn parameter file we can (or may) read."""


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only callables the file may name, each accepting only what a numpy array needs."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray

    def latin1_encode(text, encoding="latin1", errors="strict"):
        # Python 3 pickles bytes (protocol < 3) as _codecs.encode(str, "latin1"); nothing else is needed.
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str) or errors != "strict":
            raise FolkRNNImportError("the file calls _codecs.encode with an unexpected codec; refusing it")
        return text.encode("latin1", errors)

    def dtype(spec, align=False, copy=False):
        code = spec.encode("latin1") if isinstance(spec, str) else spec
        if not isinstance(code, bytes) or not re.fullmatch(rb"[<>|=]?[a-zA-Z]\d{0,3}", code) or \
                not isinstance(align, SCALARS) or not isinstance(copy, SCALARS):
            raise PickleRefused(f"a numpy dtype is given as {_bounded(spec)}")
        kind = np.dtype(code.decode("latin1")).kind
        if kind not in DTYPE_KINDS:
            raise PickleRefused(f"an array of dtype {_bounded(spec)} (kind {kind!r}) could hold Python objects")
        return np.dtype(code.decode("latin1"), align, copy)

    def reconstruct(cls, shape, typecode):
        if cls is not np.ndarray or not _int_tuple(shape) or not isinstance(typecode, (str, bytes)):
            raise PickleRefused("numpy's _reconstruct is called with arguments no array needs")
        return multiarray._reconstruct(cls, shape, typecode)

    def scalar(dtype_, data=None):
        if not isinstance(dtype_, np.dtype) or not isinstance(data, (str, bytes)):
            raise PickleRefused("numpy's scalar is called with arguments no number needs")
        return multiarray.scalar(dtype_, data)

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): dtype, ("_codecs", "encode"): latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


def _int_tuple(value: object) -> bool:
    return isinstance(value, tuple) and len(value) <= 32 and all(
        isinstance(n, int) and not isinstance(n, bool) for n in value)


def _bounded(value: object, limit: int = 40) -> str:
    """A short rendering of an untrusted value: its repr only for a scalar, cut to ``limit``."""
    if isinstance(value, (str, bytes)):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, SCALARS):
        return repr(value)[:limit]
    return f"a {type(value).__name__}"


def _text(value: object, limit: int = 200) -> str:
    """A name from the file (configuration, experiment id) as text, bounded; '' for anything else."""
    if isinstance(value, bytes):
        value = value[:limit].decode("latin1")
    return value[:limit] if isinstance(value, str) else ""


class RestrictedUnpickler(BoundedUnpickler):
    """An unpickler that can build numpy arrays, numpy scalars and plain containers, nothing else,
    in bounded time (model/safe_pickle.py)."""

    def __init__(self, file, **kwargs):
        super().__init__(file, max_ops=MAX_PICKLE_OPS, **kwargs)
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise FolkRNNImportError(
                f"refusing to unpickle: the file asks for {_text(module, 80)}.{_text(name, 80)}, and only numpy "
                "arrays and plain containers are allowed (an untrusted pickle can run code when loaded)") from None

    def persistent_load(self, pid):
        raise FolkRNNImportError("refusing to unpickle: the file uses persistent ids")

    def load_build(self):
        state, target = self.stack.pop(), self.stack[-1]
        if isinstance(target, np.ndarray) and _array_state(state):
            target.__setstate__(state)
        elif isinstance(target, np.dtype) and isinstance(state, tuple) and len(state) >= 5 and \
                all(entry is None for entry in state[2:5]) and all(isinstance(e, SCALARS) for e in state):
            target.__setstate__(state)
        else:
            raise PickleRefused(f"it sets the state of a {type(target).__name__} to a {type(state).__name__}")


RestrictedUnpickler.dispatch = {**BoundedUnpickler.dispatch,
                                pickle.BUILD[0]: counted(RestrictedUnpickler.load_build)}


def _array_state(state: object) -> bool:
    """An ndarray's pickled state: ([version,] shape, dtype, is_fortran, raw bytes)."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        return False
    shape, dtype, fortran, raw = state[-4:]
    return _int_tuple(shape) and isinstance(dtype, np.dtype) and isinstance(fortran, (bool, int)) and \
        isinstance(raw, (bytes, str))


def read_bounded(path: str) -> bytes:
    """The file's bytes, refusing one larger than any folk-rnn model before reading it."""
    if not os.path.isfile(path):
        raise FolkRNNImportError(f"no such file: {path}")
    size = os.path.getsize(path)
    if size > MAX_PICKLE_BYTES:
        raise FolkRNNImportError(f"{path} is {size:,} bytes; a folk-rnn parameter file is at most "
                                 f"{MAX_PICKLE_BYTES:,} (v2's is about 22 MB)")
    with open(path, "rb") as handle:
        data = handle.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:  # it grew while we looked
        raise FolkRNNImportError(f"{path} is larger than {MAX_PICKLE_BYTES:,} bytes")
    return data


def unpickle_metadata(data: bytes, path: str) -> dict:
    """The original metadata dict from the file's bytes, read safely (``encoding="latin1"`` for
    Python 2 strings)."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        check_expansion(obj, MAX_PICKLE_OPS)
    except FolkRNNImportError as err:
        raise FolkRNNImportError(f"{path}: {err}") from None
    except PickleRefused as err:
        raise FolkRNNImportError(f"{path}: refusing to unpickle: {err}; folk-rnn's file holds only numpy arrays, "
                                 "numbers and names") from None
    except RecursionError:
        raise FolkRNNImportError(f"{path} is not a readable pickle (it nests too deeply)") from None
    except Exception as err:  # truncated or not a pickle at all
        detail = " ".join(str(err).split())[:160]
        raise FolkRNNImportError(f"{path} is not a readable pickle ({type(err).__name__}: {detail})") from None
    if not isinstance(obj, dict) or "param_values" not in obj or "token2idx" not in obj:
        raise FolkRNNImportError(f"{path} is a pickle but not folk-rnn's metadata (a dict with param_values "
                                 "and token2idx)")
    return obj


def read_folkrnn_pickle(path: str) -> dict:
    """The original metadata dict of the file at ``path``, read safely and within bounds."""
    return unpickle_metadata(read_bounded(path), path)


def _array(value, what: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise FolkRNNImportError(f"{what} is not a numeric numpy array")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if value.ndim not in ndims:
        raise FolkRNNImportError(f"{what} has shape {value.shape}, expected {ndims[0]} dimensions")
    value = value.astype(np.float64)
    bad = int(value.size - np.isfinite(value).sum())
    if bad:  # they would import and sample nonsense (or train to NaN) without a word
        raise FolkRNNImportError(f"{what} holds {bad:,} NaN or infinite values: the model diverged or the file "
                                 "is damaged")
    return value


def token_permutation(token2idx: object) -> np.ndarray:
    """``perm[k]`` = the file's index of our token k. Refuses a vocabulary other than ours."""
    if not isinstance(token2idx, dict):
        raise FolkRNNImportError(f"token2idx is a {type(token2idx).__name__}, not a dict of token names")
    names = {k for k in token2idx if isinstance(k, str)}
    others = [_bounded(k) for k in token2idx if not isinstance(k, str)]
    missing, extra = sorted(set(TOKENS) - names), sorted(n[:20] for n in names - set(TOKENS)) + others
    if missing or extra:
        raise FolkRNNImportError(
            f"the file's vocabulary is not folk-rnn v2's: missing {missing[:8]}, extra {extra[:8]} "
            f"({len(token2idx)} tokens); only the v2 model can be imported")
    numbers = [token2idx[t] for t in TOKENS]
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in numbers):
        raise FolkRNNImportError("the file's token2idx does not map every token to a number")
    perm = np.array([int(n) for n in numbers])
    if sorted(perm.tolist()) != list(range(VOCAB_SIZE)):
        raise FolkRNNImportError("the file's token2idx does not number its tokens 0..136 once each")
    return perm


def convert(metadata: dict) -> tuple[FolkRNN, dict]:
    """Our model holding the original's weights, and facts about the conversion."""
    values = metadata["param_values"]
    if not isinstance(values, (list, tuple)):
        raise FolkRNNImportError(f"param_values is a {type(values).__name__}, not a list of arrays")
    n_layers = (len(values) - 3) // PARAMS_PER_LAYER
    if len(values) < 3 + PARAMS_PER_LAYER or (len(values) - 3) % PARAMS_PER_LAYER or n_layers > MAX_LAYERS:
        raise FolkRNNImportError(f"param_values has {len(values)} arrays; folk-rnn's layout has 3 + 14 per layer "
                                 f"(1 to {MAX_LAYERS} layers)")
    perm = token_permutation(metadata["token2idx"])
    emb = _array(values[0], "param_values[0] (embedding)", 2)
    if emb.shape[0] != VOCAB_SIZE:
        raise FolkRNNImportError(f"the embedding has {emb.shape[0]} rows, expected {VOCAB_SIZE}")
    n_units = _array(values[2], "param_values[2] (W_hi)", 2).shape[0]
    try:  # before a tensor is allocated: a crafted W_hi of shape (10**9, 0) costs nothing to pickle
        config = ModelConfig(vocab_size=VOCAB_SIZE, n_layers=n_layers, n_units=n_units).check()
    except ModelConfigError as err:
        raise FolkRNNImportError(f"the file's model does not fit: {err}") from None
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
        # _text, never str(): a crafted "configuration" can be a billion laughs
        "configuration": _text(metadata.get("configuration")),
        "experiment_id": _text(metadata.get("experiment_id")),
        "n_layers": n_layers,
        "n_units": n_units,
        "parameters": model.num_parameters(),
        "token_order_identical": bool((perm == np.arange(VOCAB_SIZE)).all()),
        "embedding_identity": bool(emb.shape[1] == VOCAB_SIZE and np.array_equal(emb, np.eye(VOCAB_SIZE))),
    }
    return model, info


def import_folkrnn(pkl_path: str, out_path: str) -> dict:
    """Convert the original parameter file to a checkpoint at ``out_path``; returns what was done."""
    check_out_path(out_path)
    data = read_bounded(pkl_path)
    source_sha256 = hashlib.sha256(data).hexdigest()
    metadata = unpickle_metadata(data, pkl_path)
    del data
    try:
        model, info = convert(metadata)
    except FolkRNNImportError as err:
        raise FolkRNNImportError(f"{pkl_path}: {err}") from None
    meta = {"written_by": "folkrnn import-folkrnn", "imported_from": os.path.basename(pkl_path),
            "name": f"folk-rnn v2 {info['n_layers']}x{info['n_units']}, imported from {os.path.basename(pkl_path)}",
            "source_sha256": source_sha256, **info}
    save_checkpoint(out_path, model, model.config, meta=meta)
    return {**info, "out": out_path, "source_sha256": source_sha256}


def check_out_path(out_path: str) -> None:
    """Refuse, before reading anything, an --out that is a folder or lies under a file."""
    if os.path.isdir(out_path):
        raise UsageError(f"{setting('out')} {out_path} is a folder; give the checkpoint's file name, e.g. "
                         f"{os.path.join(out_path, 'folkrnn-v2.pt')}")
    check_folder(os.path.dirname(out_path), "the checkpoint")
