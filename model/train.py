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
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from folkrnn.model.checkpoint import (
    CheckpointError,
    checkpoint_id,
    make_folder,
    read_payload,
    save_checkpoint,
)
from folkrnn.model.data import IGNORE, TuneSet, epoch_batches, make_batch, sorted_batches
from folkrnn.model.network import FolkRNN, ModelConfig
from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.files import atomic_write

METRICS_FIELDS = ["step", "epoch", "split", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s", "grad_norm"]


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


class LasagneRMSprop(torch.optim.Optimizer):
    """Lasagne's rmsprop: accu = rho accu + (1 - rho) g^2; p -= lr g / sqrt(accu + eps)."""

    def __init__(self, params, lr: float = 0.003, rho: float = 0.9, eps: float = 1e-6):
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "accu" not in state:
                    state["accu"] = torch.zeros_like(p)
                accu = state["accu"]
                accu.mul_(group["rho"]).addcmul_(p.grad, p.grad, value=1 - group["rho"])
                p.addcdiv_(p.grad, (accu + group["eps"]).sqrt_(), value=-group["lr"])


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate during 0-based ``epoch``: decayed once at the end of every epoch > decay_after."""
    return cfg.lr * cfg.lr_decay ** max(0, epoch - cfg.lr_decay_after - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def make_optimizer(model: FolkRNN, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.clip_mode == "elementwise":
        return LasagneRMSprop(params, lr=cfg.lr, rho=cfg.rho, eps=cfg.eps)
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rho, eps=cfg.eps)


def batch_loss(model: FolkRNN, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood (nats) over real targets, and their number."""
    logits, _ = model(inputs)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total, int((targets != IGNORE).sum())


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def evaluate(model: FolkRNN, tunes: list[np.ndarray], batch_size: int, device: torch.device,
             precision: str = "fp32") -> float:
    """Mean nats per token over ``tunes``, dropout off."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for indices in sorted_batches([len(t) for t in tunes], batch_size):
            inputs, targets = make_batch(tunes, indices)
            with autocast(device, precision):
                loss, n = batch_loss(model, torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device))
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


class MetricsLog:
    """metrics.csv: one row per train step and per validation; on resume, rows after the
    checkpoint's step (work that was lost) are dropped first."""

    def __init__(self, path: str, resume_step: int | None, validated_at_resume: bool = True):
        self.path = path
        self.rows: list[dict] = []
        if resume_step is not None and os.path.exists(path):
            with open(path, newline="") as handle:
                # A validation row at the resume step is kept only if the checkpoint came after it.
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) < resume_step or (
                    int(r["step"]) == resume_step and (r["split"] == "train" or validated_at_resume))]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(path, text.getvalue())
        self._handle = self._named(lambda: open(path, "a", newline=""))
        self._writer = csv.DictWriter(self._handle, METRICS_FIELDS)

    def _named(self, action):
        """Run ``action``; a failed write (no space, file too large) carries no file name: add ours."""
        try:
            return action()
        except OSError as err:
            if err.filename is not None or err.errno is None:
                raise
            raise OSError(err.errno, err.strerror or str(err), self.path) from err

    def write(self, row: dict) -> None:
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        self._writer.writerow(row)
        self._named(self._handle.flush)

    def close(self) -> None:
        self._named(self._handle.close)


def plot_losses(rows: list[dict], path: str) -> None:
    """Loss curve PNG: train loss per step (faint) and per epoch, valid loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(int(r["step"]), float(r["loss"]), int(r["epoch"])) for r in rows if r["split"] == "train"]
    valid = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "valid"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        steps, losses, epochs = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        by_epoch: dict[int, list] = {}
        for s, loss, e in train:
            by_epoch.setdefault(e, []).append((s, loss))
        ends = [(max(s for s, _ in v), sum(x for _, x in v) / len(v)) for _, v in sorted(by_epoch.items())]
        ax.plot(*zip(*ends), color="tab:blue", marker=".", label="train (epoch mean)")
    if valid:
        ax.plot(*zip(*valid), color="tab:orange", marker="o", label="valid (dropout off)")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.set_title("folk-rnn training loss")
    ax.grid(alpha=0.3)
    if train or valid:
        ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    atomic_write(path, image.getvalue())


@contextlib.contextmanager
def restoring(path: str):
    """A training state that cannot be restored (damaged, crafted, from another version) is one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:160]
        raise CheckpointError(f"{path}: its training state cannot be restored ({type(err).__name__}: {detail}); "
                              f"start a new run from its weights with --init {path}") from None


def checkpoint_paths(out_dir: str) -> tuple[str, str]:
    return os.path.join(out_dir, "checkpoints", "last.pt"), os.path.join(out_dir, "checkpoints", "best.pt")


def train(data: TuneSet, out_dir: str, model_config: ModelConfig | None = None, cfg: TrainConfig | None = None,
          resume: str | None = None, progress: bool = True, log=print, init: str | None = None) -> dict:
    """Train (or resume) and write ``out_dir``: checkpoints/last.pt and best.pt, metrics.csv,
    loss.png. With ``resume`` (a checkpoint path), model and training config come from the
    checkpoint except ``max_epochs``, ``max_steps``, ``checkpoint_every``, ``device`` and
    ``precision``, which ``cfg`` may change. With ``init`` (any checkpoint, a sampling-only
    export too), a new run starts from its weights: fine-tuning, with a fresh optimizer and
    learning-rate schedule; ``model_config`` must have the checkpoint's sizes. Returns a
    summary dict."""
    from tqdm import tqdm

    payload = None
    if resume is not None:
        payload = read_payload(resume)
        if payload.get("train_state") is None or payload.get("optimizer") is None:
            raise CheckpointError(f"{resume} holds weights but no training state (an imported model?); "
                                  "it can be sampled but not resumed")
        with restoring(resume):
            saved = TrainConfig.from_dict(payload["train_state"]["train_config"])
            fingerprint = payload["train_state"]["data"]["fingerprint"]
        if cfg is not None:
            for key in ("max_epochs", "max_steps", "checkpoint_every", "device", "precision"):
                setattr(saved, key, getattr(cfg, key))
        cfg = saved
        model_config = ModelConfig.from_dict(payload["model_config"])  # checked by read_payload
        if fingerprint != data.fingerprint():
            raise UsageError(f"the training data differ from those of {resume} (fingerprint {data.fingerprint()} "
                             f"!= {fingerprint}): resume with the same data (and --valid-fraction) it was trained on")
    cfg = cfg or TrainConfig()
    model_config = model_config or ModelConfig()
    if cfg.clip_mode not in ("norm", "elementwise"):
        raise UsageError(f"clip mode must be 'norm' or 'elementwise', got {cfg.clip_mode!r}")
    if cfg.batch_size < 1 or cfg.max_epochs < 0 or cfg.max_steps < 0:
        raise UsageError("batch size must be at least 1 and max epochs/steps not negative")
    device = resolve_device(cfg.device)
    if cfg.precision == "tf32" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(cfg.seed)
    model = FolkRNN(model_config).to(device)
    model.elementwise_clip = cfg.clip if cfg.clip_mode == "elementwise" else 0.0
    optimizer = make_optimizer(model, cfg)
    epoch, batch_index, step, elapsed = 0, 0, 0, 0.0
    best_valid = math.inf
    init_info = None
    if init is not None and payload is None:
        start = read_payload(init)
        sizes = ModelConfig.from_dict(start["model_config"])
        if (sizes.n_layers, sizes.n_units) != (model_config.n_layers, model_config.n_units):
            raise UsageError(f"{init} is a {sizes.n_layers}x{sizes.n_units} model; the run asks for "
                             f"{model_config.n_layers}x{model_config.n_units}")
        model.load_state_dict(start["model"])
        init_info = {"path": init, "checkpoint_id": checkpoint_id(init)}
    if payload is not None:
        model.load_state_dict(payload["model"])
        with restoring(resume):
            optimizer.load_state_dict(payload["optimizer"])
            ts = payload["train_state"]
            init_info = ts.get("init")
            epoch, batch_index, step = int(ts["epoch"]), int(ts["batch_index"]), int(ts["step"])
            elapsed, best_valid = float(ts["elapsed_s"]), float(ts["best_valid_loss"])
            set_rng_state(ts["rng"], device)

    make_folder(os.path.join(out_dir, "checkpoints"), "the training run")
    last_path, best_path = checkpoint_paths(out_dir)
    metrics = MetricsLog(os.path.join(out_dir, "metrics.csv"), step if payload is not None else None,
                         validated_at_resume=batch_index == 0)
    png_path = os.path.join(out_dir, "loss.png")
    lengths = [len(t) for t in data.train]
    data_info = {"source": data.source, "fingerprint": data.fingerprint(), "n_train": len(data.train),
                 "n_valid": len(data.valid)}
    params = [p for p in model.parameters() if p.requires_grad]

    def save(path: str, next_epoch: int, next_batch: int, valid_loss: float | None = None) -> None:
        state = {"epoch": next_epoch, "batch_index": next_batch, "step": step, "elapsed_s": elapsed,
                 "best_valid_loss": best_valid, "valid_loss": valid_loss, "train_config": asdict(cfg),
                 "data": data_info, "rng": rng_state(device), "init": init_info}
        schedule = {"kind": "decay_after", "lr": cfg.lr, "decay": cfg.lr_decay, "decay_after": cfg.lr_decay_after,
                    "epoch": next_epoch, "current_lr": lr_at_epoch(cfg, next_epoch)}
        meta = {"written_by": "folkrnn train"}
        if init_info:
            meta["initialised_from"] = init_info["checkpoint_id"]
        save_checkpoint(path, model, model_config, optimizer, schedule, state, meta=meta)

    log(f"train: {len(data.train)} tunes ({data.tokens('train')} tokens), valid: {len(data.valid)} tunes; "
        f"model {model_config.n_layers}x{model_config.n_units}, {model.num_parameters():,} parameters; "
        f"device {device}; clip {cfg.clip_mode}" + (f"; weights from {init}" if init_info and not payload else "")
        + (f"; resuming at step {step}, epoch {epoch + 1}" if payload else ""))
    if epoch >= cfg.max_epochs or (cfg.max_steps and step >= cfg.max_steps):
        log(f"nothing to train: the run is at step {step}, epoch {epoch} (max steps {cfg.max_steps or 'none'}, "
            f"max epochs {cfg.max_epochs}); raise --max-steps or --max-epochs to train further")
    model.train()
    stopped_by = None
    last_valid = None
    train_loss_epoch = (0.0, 0)
    with _StopRequest() as stop:
        try:
            while epoch < cfg.max_epochs:
                lr = lr_at_epoch(cfg, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
                bar = tqdm(total=len(batches), initial=batch_index, desc=f"epoch {epoch + 1}/{cfg.max_epochs}",
                           unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
                tokens_done, time_done = 0, 0.0
                while batch_index < len(batches):
                    if cfg.max_steps and step >= cfg.max_steps:
                        stopped_by = "max_steps"
                        break
                    if stop.requested:
                        stopped_by = "signal"
                        break
                    started = time.perf_counter()
                    inputs, targets = make_batch(data.train, batches[batch_index])
                    inputs = torch.from_numpy(inputs).to(device, non_blocking=True)
                    targets = torch.from_numpy(targets).to(device, non_blocking=True)
                    with autocast(device, cfg.precision):
                        total, n_tokens = batch_loss(model, inputs, targets)
                    # norm mode: nats/token; faithful: per-tune sums averaged over the batch
                    objective = total / (n_tokens if cfg.clip_mode == "norm" else inputs.shape[0])
                    optimizer.zero_grad(set_to_none=True)
                    objective.backward()
                    if cfg.clip_mode == "norm":
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip))
                    else:
                        grad_norm = float(torch.linalg.vector_norm(
                            torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])))
                    optimizer.step()
                    loss = float(total.detach()) / n_tokens
                    if not math.isfinite(loss):  # raised before anything is saved: checkpoints stay finite
                        raise UsageError(f"training diverged at step {step + 1} (loss {loss}); nothing after step "
                                         f"{step} is saved: lower --lr, or check the data")
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - started
                    step += 1
                    batch_index += 1
                    elapsed += seconds
                    tokens_done += n_tokens
                    time_done += seconds
                    train_loss_epoch = (train_loss_epoch[0] + float(total.detach()), train_loss_epoch[1] + n_tokens)
                    metrics.write({"step": step, "epoch": epoch + 1, "split": "train", "loss": loss, "lr": lr,
                                   "tokens": n_tokens, "tokens_per_s": n_tokens / seconds, "elapsed_s": elapsed,
                                   "grad_norm": grad_norm})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_done / time_done:.0f}", lr=f"{lr:.2g}")
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        save(last_path, epoch, batch_index)
                bar.close()
                if stopped_by:
                    break
                # end of epoch: validate, checkpoint, plot
                last_valid = evaluate(model, data.valid, cfg.batch_size, device, cfg.precision) if data.valid else None
                train_mean = train_loss_epoch[0] / max(train_loss_epoch[1], 1)
                train_loss_epoch = (0.0, 0)
                if last_valid is not None:
                    metrics.write({"step": step, "epoch": epoch + 1, "split": "valid", "loss": last_valid, "lr": lr,
                                   "tokens": data.tokens("valid"), "tokens_per_s": "", "elapsed_s": elapsed,
                                   "grad_norm": ""})
                improved = last_valid is not None and last_valid < best_valid
                if improved:
                    best_valid = last_valid
                epoch += 1
                batch_index = 0
                save(last_path, epoch, 0, last_valid)
                if improved:
                    save(best_path, epoch, 0, last_valid)
                plot_losses(metrics.rows, png_path)
                rate = tokens_done / time_done if time_done else 0.0
                log(f"epoch {epoch}/{cfg.max_epochs}: train {train_mean:.4f} nats/token"
                    + (f", valid {last_valid:.4f}" if last_valid is not None else "")
                    + f", {rate:,.0f} tokens/s, {time_done:.1f} s" + (" (best)" if improved else ""))
        finally:
            metrics.close()
        if stopped_by:
            save(last_path, epoch, batch_index)
            plot_losses(metrics.rows, png_path)
        if stopped_by == "signal":
            log(f"stopped at step {step}; checkpoint written to {last_path}")
            raise KeyboardInterrupt
    return {"step": step, "epoch": epoch, "batch_index": batch_index, "elapsed_s": elapsed,
            "best_valid_loss": best_valid if math.isfinite(best_valid) else None, "valid_loss": last_valid,
            "last": last_path, "best": best_path if os.path.exists(best_path) else None,
            "metrics": metrics.path, "plot": png_path, "stopped_by": stopped_by or "max_epochs", "model": model}
