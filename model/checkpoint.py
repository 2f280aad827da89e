"""Self-contained checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, dicts, lists, strings and numbers (no pickled
classes), so loading one can never run code. Its keys:

    format, version      "folkrnn-checkpoint", 1
    model_config         ModelConfig as a dict
    vocabulary           the token list, model index order (must equal schemas.vocab.TOKENS)
    model                the state dict (CPU tensors)
    optimizer            optimizer.state_dict() or None
    scheduler            learning-rate schedule state (plain dict) or None
    train_state          epoch, batch_index, step, best_valid_loss, RNG states, data fingerprint,
                         train config ... (see model/train.py) or None
    torch_version        the torch that wrote it
    meta                 provenance (plain dict): who wrote it, from what (e.g. the imported file's sha256)
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import torch

from model.network import FolkRNN, ModelConfig
from pipeline.errors import UsageError
from schemas.vocab import TOKENS

FORMAT = "folkrnn-checkpoint"
VERSION = 1


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


def atomic_save(payload: dict, path: str) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename over it: a reader
    (or a crash) sees the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


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


def read_payload(path: str, device: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict, checked for format and vocabulary."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError ...
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else
                     type(err).__name__)
        raise CheckpointError(f"{path} is not a readable folkrnn checkpoint ({first}); checkpoints hold only "
                              "tensors and plain values, written by `folkrnn train` or `folkrnn import-folkrnn`") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a folkrnn checkpoint (no format={FORMAT!r} key)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload['version']}; this folkrnn reads up to "
                              f"{VERSION}: upgrade folkrnn")
    vocabulary = payload.get("vocabulary")
    if list(vocabulary or []) != list(TOKENS):
        theirs = set(vocabulary or [])
        missing, extra = sorted(set(TOKENS) - theirs), sorted(theirs - set(TOKENS))
        detail = (f"missing {missing[:5]}, extra {extra[:5]}" if missing or extra
                  else "same tokens in another order")
        raise CheckpointError(f"{path} was trained on another vocabulary than folk-rnn v2's ({detail}); "
                              "it cannot be used with this folkrnn")
    return payload


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[FolkRNN, dict]:
    """The model (in eval mode, on ``device``) and the whole payload of a checkpoint."""
    payload = read_payload(path, device)
    model = FolkRNN(ModelConfig.from_dict(payload["model_config"]))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model config it records ({err})") from None
    model.to(device).eval()
    return model, payload


def checkpoint_id(path: str) -> str:
    """First 16 hex digits of the file's sha256: names the exact weights in provenance records."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
