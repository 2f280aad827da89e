"""Self-contained checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, dicts, lists, strings and numbers (no pickled
classes), so loading one can never run code. Its keys:

    format, version      "folkrnn-checkpoint", 1
    model_config         ModelConfig as a dict
    vocabulary           the token list, model index order (must equal folkrnn.schemas.vocab.TOKENS)
    model                the state dict (CPU tensors)
    optimizer            optimizer.state_dict() or None
    scheduler            learning-rate schedule state (plain dict) or None
    train_state          epoch, batch_index, step, best_valid_loss, RNG states, data fingerprint,
                         train config ... (see model/train.py) or None
    torch_version        the torch that wrote it
    meta                 provenance (plain dict): who wrote it, from what (e.g. the imported file's sha256),
                         ``name`` (a short human name, shown on title pages and in manifests)
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from typing import BinaryIO

import torch

from folkrnn.model.network import FolkRNN, ModelConfig, ModelConfigError, expected_shapes
from folkrnn.model.safe_pickle import PickleRefused
from folkrnn.model.safe_pickle import check_structure as check_structure_of_pickle
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.files import atomic_write
from folkrnn.schemas.vocab import TOKENS

FORMAT = "folkrnn-checkpoint"
VERSION = 1
# A checkpoint's pickle (its structure; tensors are stored beside it) is a few KB.
MAX_PICKLE_BYTES = 64 * 1024 * 1024
MAX_PICKLE_OPS = 5_000_000
HOW_TO_GET_ONE = ("checkpoints are written by `folkrnn train` or `folkrnn import-folkrnn`, and model/demo.pt "
                  "and model/base.pt are two")


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable or not for this vocabulary."""


def _cpu(obj):
    """Tensors to CPU, recursively: a checkpoint loads on any device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def check_folder(folder: str, what: str = "the output") -> None:
    """Refuse, before any work, a folder that cannot be made because a file stands in its way."""
    current = os.path.abspath(folder or ".")
    while not os.path.exists(current):
        current = os.path.dirname(current)
    if not os.path.isdir(current):
        raise UsageError(f"cannot write {what} into {folder}: {current} is not a folder "
                         "(choose another path)")


def make_folder(folder: str, what: str = "the output") -> None:
    """os.makedirs, saying which file stands in the way rather than 'File exists' or 'Not a directory'."""
    try:
        os.makedirs(folder or ".", exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_folder(folder, what)
        raise


class _Recorder:
    """A write-only handle that remembers the OSError of a failed write: torch.save reports it as a
    RuntimeError of its own (``unexpected pos ...``), and the real cause (no space) would be lost."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_writer(payload: dict) -> Callable[[BinaryIO], None]:
    """A callable for ``atomic_write`` that torch.saves ``payload``; a failed write raises its OSError."""

    def write(handle: BinaryIO) -> None:
        recorder = _Recorder(handle)
        try:
            torch.save(payload, recorder)
        except RuntimeError:
            if recorder.error is None:
                raise
            raise recorder.error from None

    return write


def atomic_save(payload: dict, path: str) -> None:
    """torch.save through ``atomic_write``: a reader (or a crash) sees the old file or the new one,
    never half of one. A failure is an OSError naming ``path`` (no space, file too large ...)."""
    make_folder(os.path.dirname(os.path.abspath(path)))
    atomic_write(path, torch_writer(payload))


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def check_plain(obj, where: str = "checkpoint") -> None:
    """Refuse, at save time, anything ``torch.load(weights_only=True)`` would refuse at load time."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, where)
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        for k, v in enumerate(obj):
            check_plain(v, f"{where}[{k}]")
    elif type(obj) not in _PLAIN and not isinstance(obj, torch.Tensor):
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold only tensors and plain values")


def make_payload(model: FolkRNN, config: ModelConfig | None = None, optimizer: torch.optim.Optimizer | None = None,
                 scheduler_state: dict | None = None, train_state: dict | None = None,
                 meta: dict | None = None) -> dict:
    config = config or model.config
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_config": config.to_dict(),
        "vocabulary": list(TOKENS),
        "model": _cpu(dict(model.state_dict())),
        "optimizer": _cpu(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": scheduler_state,
        "train_state": _cpu(train_state) if train_state is not None else None,
        "torch_version": str(torch.__version__),  # TorchVersion is a class weights_only refuses
        "meta": dict(meta or {}),
    }


def save_checkpoint(path: str, model: FolkRNN, config: ModelConfig | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler_state: dict | None = None,
                    train_state: dict | None = None, meta: dict | None = None) -> None:
    """Write everything needed to sample from or resume ``model`` to ``path``, atomically."""
    payload = make_payload(model, config, optimizer, scheduler_state, train_state, meta)
    check_plain(payload)
    atomic_save(payload, path)


def _unreadable(path: str, err: Exception) -> CheckpointError:
    """Why torch.load refused a file, in our words (torch's own text asks the user to file an issue)."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]{1,200})", text)
    if refused:
        why = (f"it holds a pickled Python object ({refused.group(1)}), and only tensors and plain values are "
               "loaded, since unpickling objects can run code")
    elif "WeightsUnpickler" in text or isinstance(err, (EOFError, UnicodeDecodeError)) or "zip" in text.lower():
        why = "it is not a file torch saved, or it is damaged or cut short"
    else:
        why = f"torch cannot read it ({type(err).__name__})"
    return CheckpointError(f"{path} is not a folkrnn checkpoint: {why}; {HOW_TO_GET_ONE}")


def check_weights(state: object, config: ModelConfig, where: str) -> None:
    """The state dict must hold exactly the tensors ``config`` needs, of those shapes, all finite.

    Shapes are compared before any value is read, so a crafted tensor cannot make us allocate;
    NaN or infinite weights are refused, since they sample nonsense and train to NaN silently."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: holds no weights (its 'model' entry is not a state dict)")
    shapes = expected_shapes(config)
    missing = [name for name in shapes if name not in state]
    extra = [name if isinstance(name, str) else type(name).__name__ for name in state if name not in shapes]
    if missing or extra:
        raise CheckpointError(f"{where}: weights do not fit its model_config ({config.n_layers}x{config.n_units}): "
                              f"missing {missing[:4]}, unexpected {[n[:60] for n in extra[:4]]}")
    for name, shape in shapes.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointError(f"{where}: weight {name} is not a floating-point tensor")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{where}: weight {name} has shape {tuple(tensor.shape)}, but its model_config "
                                  f"({config.n_layers}x{config.n_units}) needs {shape}")
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(f"{where}: weight {name} holds {bad:,} NaN or infinite values; the model "
                                  "diverged or the file is damaged: use an earlier checkpoint")


def check_structure(file: str, path: str) -> None:
    """Refuse, before torch.load, a file that is not a torch zip or whose pickle could take unbounded
    time (torch's weights-only unpickler hashes a crafted nested tuple forever: model/safe_pickle.py)."""
    not_torch = f"{path} is not a folkrnn checkpoint: it is not a file torch saved, or it is damaged or cut short"
    try:
        with zipfile.ZipFile(file) as archive:
            pickles = [info for info in archive.infolist() if info.filename.count("/") == 1
                       and info.filename.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{not_torch}; {HOW_TO_GET_ONE}")
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path} is not a folkrnn checkpoint: its pickle is {pickles[0].file_size:,} "
                                      f"bytes, and a checkpoint's is a few KB")
            data = archive.read(pickles[0])
        check_structure_of_pickle(data, MAX_PICKLE_OPS)
    except PickleRefused as err:
        raise CheckpointError(f"{path} is not a folkrnn checkpoint: refusing to load it: {err}") from None
    except CheckpointError:
        raise
    except OSError:
        raise
    except Exception:  # not a zip, a damaged zip or pickle
        raise CheckpointError(f"{not_torch}; {HOW_TO_GET_ONE}") from None


def read_payload(path: str, device: str | torch.device = "cpu", name: str | None = None) -> dict:
    """The checkpoint's dict, checked for format, vocabulary, model config and weights (shapes, all
    finite) before anything is built from it. Messages call the file ``name`` (default ``path``;
    e.g. the gs:// address of a downloaded copy)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    file, path = path, name or path
    check_structure(file, path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            payload = torch.load(file, map_location=device, weights_only=True)
    except OSError:
        raise
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError ...
        raise _unreadable(path, err) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a folkrnn checkpoint (no format={FORMAT!r} key); {HOW_TO_GET_ONE}")
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} is not a folkrnn checkpoint (its version is not a number)")
    if version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version}; this folkrnn reads up to "
                              f"{VERSION}: upgrade folkrnn")
    vocabulary = payload.get("vocabulary")
    vocabulary = list(vocabulary) if isinstance(vocabulary, (list, tuple)) else []
    if vocabulary != list(TOKENS):
        theirs = {t for t in vocabulary if isinstance(t, str)}
        missing, extra = sorted(set(TOKENS) - theirs), sorted(t[:20] for t in theirs - set(TOKENS))
        detail = (f"missing {missing[:5]}, extra {extra[:5]}" if missing or extra
                  else "same tokens in another order")
        raise CheckpointError(f"{path} was trained on another vocabulary than folk-rnn v2's ({detail}); "
                              "it cannot be used with this folkrnn")
    config = model_config_of(payload, path)
    check_weights(payload.get("model"), config, path)
    return payload


def model_config_of(payload: dict, path: str) -> ModelConfig:
    """The checked ModelConfig a checkpoint records; CheckpointError naming ``path`` when it is not one."""
    try:
        return ModelConfig.from_dict(payload.get("model_config"))
    except ModelConfigError as err:
        raise CheckpointError(f"{path} is not a valid folkrnn checkpoint: {err}; {HOW_TO_GET_ONE}") from None


def load_checkpoint(path: str, device: str | torch.device = "cpu", name: str | None = None
                    ) -> tuple[FolkRNN, dict]:
    """The model (in eval mode, on ``device``) and the whole payload of a checkpoint (``name``: as
    in read_payload)."""
    payload = read_payload(path, device, name)
    path = name or path
    model = FolkRNN(model_config_of(payload, path))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:  # read_payload checked names and shapes; this is a safety net
        detail = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: weights do not fit the model config it records ({detail})") from None
    model.to(device).eval()
    return model, payload


def default_name(config: ModelConfig) -> str:
    """The name of a checkpoint that was given none: what it is, from its model config."""
    return f"folk-rnn v2-style LSTM {config.n_layers}x{config.n_units}"


def checkpoint_name(payload: dict) -> str:
    """A checkpoint's human name: ``meta["name"]``, or one built from its model config."""
    meta = payload.get("meta")
    name = meta.get("name") if isinstance(meta, dict) else None
    if isinstance(name, str) and name.strip():
        return name.strip()
    return default_name(ModelConfig.from_dict(payload["model_config"]))


def export_checkpoint(source: str, out: str, name: str | None = None) -> None:
    """A sampling-only copy of a checkpoint (weights, model config, vocabulary, meta; no optimizer
    or training state): the checked weights of ``source`` with its meta (its name too, or ``name``)
    and the id of the checkpoint it was exported from."""
    model, payload = load_checkpoint(source)
    meta = dict(payload.get("meta") or {})
    meta["name"] = name or checkpoint_name(payload)
    meta["exported_from"] = checkpoint_id(source)
    train_state = payload.get("train_state")
    if isinstance(train_state, dict):  # what a model card needs, without the state to resume
        meta.setdefault("epoch", train_state.get("epoch"))
        meta.setdefault("valid_loss", train_state.get("valid_loss"))
    save_checkpoint(out, model, model.config, meta=meta)


def checkpoint_id(path: str) -> str:
    """First 16 hex digits of the file's sha256: names the exact weights in provenance records."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
