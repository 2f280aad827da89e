"""Training folk-rnn v2: the original recipe (config5), resumable to the step.

Default ("norm" clipping), what a modern re-implementation does:
  * loss: mean negative log-likelihood per real (unpadded) target token, in nats;
  * RMSprop (torch's: eps outside the square root), lr 0.003, rho 0.9, eps 1e-6;
  * the gradient of all parameters rescaled to a total L2 norm of at most 5;
  * fused LSTM kernels for layers 2 and up (see model/network.py).

Faithful ("elementwise" clipping), what the original Lasagne code did:
  * each LSTM layer clips the gradient reaching its gates' pre-activations to [-5, 5] at every
    time step (Lasagne's ``grad_clipping=5``), which needs the per-step recurrence for all layers;
  * loss: summed over each tune's tokens and averaged over the tunes of the batch, the scale
    at which the threshold 5 was chosen;
  * Lasagne's RMSprop: ``p -= lr * g / sqrt(accu + eps)`` (eps inside the square root).

Both: batch 64, dropout 0.5, at most 100 epochs, learning rate x0.97 after each epoch whose
0-based index is above 20 (the original's ``if epoch > learning_rate_decay_after``; note that
the original passed the float, not its shared variable, to rmsprop, so its decay never took
effect, we apply it). Reported losses are always nats per token; valid runs without dropout.

How a run goes (``train``): ``start`` builds the model, the optimizer and a ``TrainState`` (new,
resumed by ``restore`` or fine-tuning by ``load_init``); then each epoch is ``train_epoch`` (a
``train_step`` per batch, a checkpoint every ``checkpoint_every`` steps) and ``end_epoch``
(validate, checkpoint, plot). A checkpoint (``save``) holds the weights, both configs, the
optimizer, the TrainState and the RNG: all that sampling and an exact resume need.

The optimizers are in model/optim.py, metrics.csv and loss.png in model/metrics.py; the rest of
the loop stays in this one file (about 480 lines), nanoGPT-style, because it reads best in one go.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from folkrnn.model.checkpoint import (
    CheckpointError,
    checkpoint_id,
    default_name,
    make_folder,
    read_payload,
    save_checkpoint,
)
from folkrnn.model.data import IGNORE, TuneSet, epoch_batches, make_batch, sorted_batches
from folkrnn.model.devices import resolve_device
from folkrnn.model.metrics import MetricsLog, plot_losses
from folkrnn.model.network import FolkRNN, ModelConfig
from folkrnn.model.optim import lr_at_epoch, make_optimizer
from folkrnn.schemas.errors import UsageError, setting

# What a resumed run may change; everything else comes from its checkpoint.
RESUME_MAY_CHANGE = ("max_epochs", "max_steps", "checkpoint_every", "device", "precision", "name")


@dataclass
class TrainConfig:
    """How to train; defaults are folk-rnn v2's config5."""

    batch_size: int = 64
    lr: float = 0.003
    rho: float = 0.9
    eps: float = 1e-6
    clip: float = 5.0
    clip_mode: str = "norm"  # "norm" (default) or "elementwise" (the original's, faithful)
    lr_decay: float = 0.97
    lr_decay_after: int = 20
    max_epochs: int = 100
    max_steps: int = 0  # 0: no limit; else stop after this many optimizer steps in total
    checkpoint_every: int = 200  # optimizer steps between checkpoints (plus one at each epoch end)
    seed: int = 42
    valid_fraction: float = 0.05  # only for folk-rnn text input
    device: str = "auto"
    precision: str = "fp32"  # fp32, tf32 (CUDA matmuls), bf16 (autocast)
    # The SQL condition that chose the tunes from the ingest ("": all of them). The caller selects
    # the data (pipeline/train.py); it is recorded here so a resume cannot change it.
    where: str = ""
    name: str = ""  # the checkpoints' human name ("": one built from the model's sizes)
    # Datasets of tunes added to the training split (e.g. the model's own --well-formed samples,
    # pipeline/train.py); recorded so a resume cannot change them.
    add_tunes: list[str] = field(default_factory=list)

    @property
    def gate_clip(self) -> float:
        """What the network's forward pass is given as ``grad_clip``: the threshold in the faithful
        ("elementwise") mode, 0 (fused kernels, no per-step clipping) in the default one."""
        return self.clip if self.clip_mode == "elementwise" else 0.0

    def check(self) -> TrainConfig:
        """Refuse a config no run can follow; returns self."""
        if self.clip_mode not in ("norm", "elementwise"):
            raise UsageError(f"clip mode must be 'norm' or 'elementwise', got {self.clip_mode!r}")
        if self.batch_size < 1 or self.max_epochs < 0 or self.max_steps < 0:
            raise UsageError("batch size must be at least 1 and max epochs/steps not negative")
        return self

    @classmethod
    def from_dict(cls, d: object) -> TrainConfig:
        """The training config a checkpoint records; each known value must have its field's type."""
        if not isinstance(d, dict):
            raise ValueError("train_config is not a dict")
        defaults = cls()
        for name in cls.__dataclass_fields__:
            if name not in d:
                continue
            value, kind = d[name], type(getattr(defaults, name))
            fits = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
            if not fits or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"train_config has {name} of type {type(value).__name__}, not {kind.__name__}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def batch_loss(model: FolkRNN, inputs: torch.Tensor, targets: torch.Tensor,
               gate_clip: float = 0.0) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood (nats) over real targets, and their number. ``gate_clip``:
    see ``TrainConfig.gate_clip``."""
    logits, _ = model(inputs, grad_clip=gate_clip)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total, int((targets != IGNORE).sum())


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def evaluate(model: FolkRNN, tunes: list[np.ndarray], batch_size: int, device: torch.device,
             precision: str = "fp32", gate_clip: float = 0.0) -> float:
    """Mean nats per token over ``tunes``, dropout off (computed the way the run trains: ``gate_clip``)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for indices in sorted_batches([len(t) for t in tunes], batch_size):
            inputs, targets = make_batch(tunes, indices)
            with autocast(device, precision):
                loss, n = batch_loss(model, torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device),
                                     gate_clip)
            total += float(loss)
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class _StopRequest:
    """SIGINT/SIGTERM set a flag checked between steps, so a stop never lands mid-update;
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@contextlib.contextmanager
def restoring(path: str):
    """A training state that cannot be restored (damaged, crafted, from another version) is one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:160]
        raise CheckpointError(f"{path}: its training state cannot be restored ({type(err).__name__}: {detail}); "
                              f"start a new run from its weights with {setting('init')} {path}") from None


def checkpoint_paths(out_dir: str) -> tuple[str, str]:
    return os.path.join(out_dir, "checkpoints", "last.pt"), os.path.join(out_dir, "checkpoints", "best.pt")


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint's ``train_state`` records besides configs, data and RNG."""

    epoch: int = 0  # the epoch in progress, 0-based
    batch_index: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps taken in all
    elapsed_s: float = 0.0  # seconds spent in training steps
    best_valid_loss: float = math.inf
    init: dict | None = None  # {"path", "checkpoint_id"}: the weights a fine-tuning run started from


@dataclass
class Run:
    """What a run trains with, fixed once it starts."""

    data: TuneSet
    cfg: TrainConfig
    model_config: ModelConfig
    model: FolkRNN
    optimizer: torch.optim.Optimizer
    device: torch.device
    out_dir: str
    metrics: MetricsLog
    data_info: dict = field(init=False)

    def __post_init__(self):
        self.data_info = {"source": self.data.source, "fingerprint": self.data.fingerprint(),
                          "n_train": len(self.data.train), "n_valid": len(self.data.valid)}

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def last_path(self) -> str:
        return checkpoint_paths(self.out_dir)[0]

    @property
    def best_path(self) -> str:
        return checkpoint_paths(self.out_dir)[1]

    @property
    def png_path(self) -> str:
        return os.path.join(self.out_dir, "loss.png")


@dataclass
class EpochTally:
    """The training steps of one epoch (of this process: a resumed epoch counts from the resume)."""

    loss: float = 0.0  # summed nats
    tokens: int = 0
    seconds: float = 0.0


def read_resume(path: str, data: TuneSet, cfg: TrainConfig | None) -> tuple[dict, TrainConfig, ModelConfig]:
    """The checkpoint to resume, with its configs; ``cfg`` may change only ``RESUME_MAY_CHANGE``."""
    payload = read_payload(path)
    if payload.get("train_state") is None or payload.get("optimizer") is None:
        raise CheckpointError(f"{path} holds weights but no training state (an imported model?); "
                              "it can be sampled but not resumed")
    with restoring(path):
        saved = TrainConfig.from_dict(payload["train_state"]["train_config"])
        fingerprint = payload["train_state"]["data"]["fingerprint"]
    if cfg is not None:
        for key in RESUME_MAY_CHANGE:
            setattr(saved, key, getattr(cfg, key))
    model_config = ModelConfig.from_dict(payload["model_config"])  # checked by read_payload
    if fingerprint != data.fingerprint():
        raise UsageError(f"the training data differ from those of {path} (fingerprint {data.fingerprint()} "
                         f"!= {fingerprint}): resume with the same data (and {setting('valid_fraction')}) it was "
                         "trained on")
    return payload, saved, model_config


def restore(path: str, payload: dict, model: FolkRNN, optimizer: torch.optim.Optimizer,
            device: torch.device) -> TrainState:
    """Weights, optimizer, counters and RNG of a resumed run, exactly as its checkpoint left them."""
    model.load_state_dict(payload["model"])
    with restoring(path):
        optimizer.load_state_dict(payload["optimizer"])
        ts = payload["train_state"]
        state = TrainState(init=ts.get("init"), epoch=int(ts["epoch"]), batch_index=int(ts["batch_index"]),
                           step=int(ts["step"]), elapsed_s=float(ts["elapsed_s"]),
                           best_valid_loss=float(ts["best_valid_loss"]))
        set_rng_state(ts["rng"], device)
    return state


def load_init(path: str, model: FolkRNN, model_config: ModelConfig) -> dict:
    """Start a fine-tuning run from the weights of any checkpoint of the same sizes; returns its
    ``TrainState.init``."""
    start = read_payload(path)
    sizes = ModelConfig.from_dict(start["model_config"])
    if (sizes.n_layers, sizes.n_units) != (model_config.n_layers, model_config.n_units):
        raise UsageError(f"{path} is a {sizes.n_layers}x{sizes.n_units} model; the run asks for "
                         f"{model_config.n_layers}x{model_config.n_units}")
    model.load_state_dict(start["model"])
    return {"path": path, "checkpoint_id": checkpoint_id(path)}


def save(run: Run, state: TrainState, path: str, valid_loss: float | None = None) -> None:
    """A checkpoint from which the run resumes exactly (and samples)."""
    cfg = run.cfg
    train_state = {"epoch": state.epoch, "batch_index": state.batch_index, "step": state.step,
                   "elapsed_s": state.elapsed_s, "best_valid_loss": state.best_valid_loss, "valid_loss": valid_loss,
                   "train_config": asdict(cfg), "data": run.data_info, "rng": rng_state(run.device),
                   "init": state.init}
    schedule = {"kind": "decay_after", "lr": cfg.lr, "decay": cfg.lr_decay, "decay_after": cfg.lr_decay_after,
                "epoch": state.epoch, "current_lr": lr_at_epoch(cfg, state.epoch)}
    meta = {"written_by": "folkrnn train", "name": cfg.name or default_name(run.model_config)}
    if cfg.where:
        meta["where"] = cfg.where
    if state.init:
        meta["initialised_from"] = state.init["checkpoint_id"]
    save_checkpoint(path, run.model, run.model_config, run.optimizer, schedule, train_state, meta=meta)


def train_step(run: Run, inputs: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, int, float]:
    """One optimizer step on a batch: its summed loss (nats, detached), real tokens and gradient norm."""
    cfg, device = run.cfg, run.device
    inputs = torch.from_numpy(inputs).to(device, non_blocking=True)
    targets = torch.from_numpy(targets).to(device, non_blocking=True)
    with autocast(device, cfg.precision):
        total, n_tokens = batch_loss(run.model, inputs, targets, cfg.gate_clip)
    # norm mode: nats/token; faithful: per-tune sums averaged over the batch
    objective = total / (n_tokens if cfg.clip_mode == "norm" else inputs.shape[0])
    run.optimizer.zero_grad(set_to_none=True)
    objective.backward()
    params = run.params
    if cfg.clip_mode == "norm":
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip))
    else:
        grad_norm = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])))
    run.optimizer.step()
    return total.detach(), n_tokens, grad_norm


def train_epoch(run: Run, state: TrainState, stop: _StopRequest, progress: bool) -> tuple[str | None, EpochTally]:
    """Train from ``state.batch_index`` to the end of ``state.epoch``; returns why it stopped early
    ("max_steps", "signal"; None: the epoch is done) and the epoch's tally."""
    from tqdm import tqdm

    cfg = run.cfg
    lr = lr_at_epoch(cfg, state.epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batches = epoch_batches([len(t) for t in run.data.train], cfg.batch_size, cfg.seed, state.epoch)
    tally = EpochTally()
    with tqdm(total=len(batches), initial=state.batch_index, desc=f"epoch {state.epoch + 1}/{cfg.max_epochs}",
              unit="batch", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        while state.batch_index < len(batches):
            if cfg.max_steps and state.step >= cfg.max_steps:
                return "max_steps", tally
            if stop.requested:
                return "signal", tally
            started = time.perf_counter()
            total, n_tokens, grad_norm = train_step(run, *make_batch(run.data.train, batches[state.batch_index]))
            loss = float(total) / n_tokens
            if not math.isfinite(loss):  # raised before anything is saved: checkpoints stay finite
                raise UsageError(f"training diverged at step {state.step + 1} (loss {loss}); nothing after step "
                                 f"{state.step} is saved: lower {setting('lr')}, or check the data")
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            state.step += 1
            state.batch_index += 1
            state.elapsed_s += seconds
            tally.loss += float(total)
            tally.tokens += n_tokens
            tally.seconds += seconds
            run.metrics.write({"step": state.step, "epoch": state.epoch + 1, "split": "train", "loss": loss, "lr": lr,
                               "tokens": n_tokens, "tokens_per_s": n_tokens / seconds, "elapsed_s": state.elapsed_s,
                               "grad_norm": grad_norm})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tally.tokens / tally.seconds:.0f}", lr=f"{lr:.2g}")
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                save(run, state, run.last_path)
    return None, tally


def end_epoch(run: Run, state: TrainState, tally: EpochTally, log) -> float | None:
    """Validate, move to the next epoch, checkpoint (best.pt too when valid improved), plot and log;
    returns the valid loss (None without valid tunes)."""
    cfg, data = run.cfg, run.data
    valid = evaluate(run.model, data.valid, cfg.batch_size, run.device, cfg.precision, cfg.gate_clip) \
        if data.valid else None
    if valid is not None:
        run.metrics.write({"step": state.step, "epoch": state.epoch + 1, "split": "valid", "loss": valid,
                           "lr": lr_at_epoch(cfg, state.epoch), "tokens": data.tokens("valid"), "tokens_per_s": "",
                           "elapsed_s": state.elapsed_s, "grad_norm": ""})
    improved = valid is not None and valid < state.best_valid_loss
    if improved:
        state.best_valid_loss = valid
    state.epoch += 1
    state.batch_index = 0
    save(run, state, run.last_path, valid)
    if improved:
        save(run, state, run.best_path, valid)
    plot_losses(run.metrics.rows, run.png_path)
    rate = tally.tokens / tally.seconds if tally.seconds else 0.0
    log(f"epoch {state.epoch}/{cfg.max_epochs}: train {tally.loss / max(tally.tokens, 1):.4f} nats/token"
        + (f", valid {valid:.4f}" if valid is not None else "")
        + f", {rate:,.0f} tokens/s, {tally.seconds:.1f} s" + (" (best)" if improved else ""))
    return valid


def start(data: TuneSet, out_dir: str, model_config: ModelConfig | None, cfg: TrainConfig | None,
          resume: str | None, init: str | None) -> tuple[Run, TrainState]:
    """A run ready to train: new, resumed from the checkpoint ``resume``, or fine-tuning the
    weights of ``init``; its folder made and metrics.csv (re)written."""
    payload = None
    if resume is not None:
        payload, cfg, model_config = read_resume(resume, data, cfg)
    cfg = (cfg or TrainConfig()).check()
    model_config = model_config or ModelConfig()
    device = resolve_device(cfg.device)
    if cfg.precision == "tf32" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(cfg.seed)
    model = FolkRNN(model_config).to(device)
    optimizer = make_optimizer(model, cfg)
    if payload is not None:
        state = restore(resume, payload, model, optimizer, device)
    else:
        state = TrainState(init=load_init(init, model, model_config) if init is not None else None)

    make_folder(os.path.join(out_dir, "checkpoints"), "the training run")
    metrics = MetricsLog(os.path.join(out_dir, "metrics.csv"), state.step if payload is not None else None,
                         validated_at_resume=state.batch_index == 0)
    return Run(data, cfg, model_config, model, optimizer, device, out_dir, metrics), state


def start_line(run: Run, state: TrainState, resume: str | None, init: str | None) -> str:
    data, sizes = run.data, run.model_config
    return (f"train: {len(data.train)} tunes ({data.tokens('train')} tokens), valid: {len(data.valid)} tunes; "
            f"model {sizes.n_layers}x{sizes.n_units}, {run.model.num_parameters():,} parameters; "
            f"device {run.device}; clip {run.cfg.clip_mode}"
            + (f"; tunes where {run.cfg.where}" if run.cfg.where else "")
            + (f"; weights from {init}" if state.init and resume is None else "")
            + (f"; resuming at step {state.step}, epoch {state.epoch + 1}" if resume is not None else ""))


def train(data: TuneSet, out_dir: str, model_config: ModelConfig | None = None, cfg: TrainConfig | None = None,
          resume: str | None = None, progress: bool = True, log=print, init: str | None = None) -> dict:
    """Train (or resume) and write ``out_dir``: checkpoints/last.pt and best.pt, metrics.csv,
    loss.png. With ``resume`` (a checkpoint path), model and training config come from the
    checkpoint except ``RESUME_MAY_CHANGE`` (max_epochs, max_steps, checkpoint_every, device,
    precision), which ``cfg`` may change. With ``init`` (any checkpoint, a sampling-only
    export too), a new run starts from its weights: fine-tuning, with a fresh optimizer and
    learning-rate schedule; ``model_config`` must have the checkpoint's sizes. Returns a
    summary dict."""
    run, state = start(data, out_dir, model_config, cfg, resume, init)
    cfg = run.cfg
    log(start_line(run, state, resume, init))
    if state.epoch >= cfg.max_epochs or (cfg.max_steps and state.step >= cfg.max_steps):
        log(f"nothing to train: the run is at step {state.step}, epoch {state.epoch} (max steps "
            f"{cfg.max_steps or 'none'}, max epochs {cfg.max_epochs}); raise --max-steps or --max-epochs to train "
            "further")

    run.model.train()
    stopped_by, valid = None, None
    with _StopRequest() as stop:
        try:
            while state.epoch < cfg.max_epochs and stopped_by is None:
                stopped_by, tally = train_epoch(run, state, stop, progress)
                if stopped_by is None:
                    valid = end_epoch(run, state, tally, log)
        finally:
            run.metrics.close()
        if stopped_by:
            save(run, state, run.last_path)
            plot_losses(run.metrics.rows, run.png_path)
        if stopped_by == "signal":
            log(f"stopped at step {state.step}; checkpoint written to {run.last_path}")
            raise KeyboardInterrupt
    best = state.best_valid_loss
    return {"step": state.step, "epoch": state.epoch, "batch_index": state.batch_index, "elapsed_s": state.elapsed_s,
            "best_valid_loss": best if math.isfinite(best) else None, "valid_loss": valid,
            "last": run.last_path, "best": run.best_path if os.path.exists(run.best_path) else None,
            "metrics": run.metrics.path, "plot": run.png_path, "stopped_by": stopped_by or "max_epochs",
            "model": run.model}
