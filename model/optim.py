"""The optimizers of the two training recipes (see model/train.py) and the learning-rate schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from folkrnn.model.network import FolkRNN
    from folkrnn.model.train import TrainConfig


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


def make_optimizer(model: FolkRNN, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.clip_mode == "elementwise":
        return LasagneRMSprop(params, lr=cfg.lr, rho=cfg.rho, eps=cfg.eps)
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rho, eps=cfg.eps)
