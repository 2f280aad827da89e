"""The folk-rnn v2 network: three LSTM layers over one-hot ABC tokens, then a softmax.

Per layer and time step (one bias per gate, no peepholes, as in the original Lasagne model):

    i  = sigmoid(x W_xi + h W_hi + b_i)        f = sigmoid(x W_xf + h W_hf + b_f)
    o  = sigmoid(x W_xo + h W_ho + b_o)        g = tanh(x W_xc + h W_hc + b_c)
    c' = f * c + i * g                          h' = o * tanh(c')

Weights are stored in torch's layout and gate order (i, f, g, o), so ``weight_ih`` is
(4H x n_in) and ``weight_hh`` is (4H x H), exactly like ``nn.LSTM``'s ``weight_ih_l0``.
Inverted dropout follows every LSTM layer; there is none on the input or the recurrent path.
Each layer also holds learned initial states ``h0`` and ``c0``, which the parameter count of
the seed article (5,599,881) does not include.

How the recurrence runs (measured on a 2-core Sapphire Rapids, see benchmarks/bench_train.py):

* Layers 2 and up call torch's fused LSTM (``torch._VF.lstm``: cuDNN on CUDA, oneDNN or ATen's
  C++ loop on CPU). Torch's kernel has two bias vectors per gate; we pass our single bias as
  ``b_ih`` and a zero *buffer* as ``b_hh``, so the parameter count stays exact.
* Layer 1 cannot use a fused kernel honestly: its input is a one-hot vector, so ``x W_x`` is a
  row lookup (``F.embedding``), and no fused API accepts precomputed input gates; feeding it
  the one-hot vectors would be the dense one-hot matmul we must not do, and an identity input
  matrix would cost four times the recurrent matmul. So layer 1 looks up its input gates for
  the whole sequence at once and runs the recurrence in ``_Recurrence``, a hand-written
  autograd Function: one addmm plus a few in-place element-wise ops per step forward, one mm
  per step backward, and the whole-sequence weight gradient as a single large matmul.
  The per-step cost is dominated by the (B x H) @ (H x 4H) matmul at v2 size, so the
  Python loop costs little there: layer 1 forward + backward at batch 64 x 200 tokens took
  0.43 s, the same as torch's fused LSTM fed dense one-hot vectors (0.40-0.43 s), and a whole
  v2 training step ran at ~215 GFLOP/s, about half the measured fp32 matmul peak.
* ``grad_clip`` (the faithful mode, a ``forward`` argument) clips the gradient reaching each gate's
  pre-activation to +-clip at every step, as Lasagne's ``LSTMLayer(grad_clipping=5)`` did.
  Fused kernels cannot do that, so in that mode every layer runs through ``_Recurrence``,
  with its input projection done for the whole sequence as one matmul.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.vocab import VOCAB_SIZE

State = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (h, c), each (B, H)


MAX_LAYERS = 8
MAX_UNITS = 4096
# v2 has 5.6 M parameters; 250 M is 1 GB of fp32 weights (training holds about four times that).
MAX_PARAMETERS = 250_000_000


class ModelConfigError(UsageError):
    """A model config outside the schema (unknown or missing keys, wrong types) or the size limits."""


def _show(value: object) -> str:
    """A short, bounded rendering of an untrusted value (repr of a crafted nested list can take forever)."""
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:40]
    return f"a {type(value).__name__}"


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass
class ModelConfig:
    """Sizes of the network; the defaults are folk-rnn v2 (config5)."""

    vocab_size: int = VOCAB_SIZE
    n_layers: int = 3
    n_units: int = 512
    dropout: float = 0.5
    # The brief asks for learned initial states. (Lasagne's LSTMLayer defaults to learn_init=False,
    # so the original's hid_init/cell_init were stored with the weights but not trained.)
    learn_init: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> ModelConfig:
        """The config a checkpoint records, checked before anything is built: exactly the known keys,
        each of its type and within the limits. Raises ModelConfigError (one line)."""
        if not isinstance(d, dict):
            raise ModelConfigError(f"model_config is {_show(d)}, not a dict")
        fields = list(cls.__dataclass_fields__)
        unknown = [_show(k) for k in d if k not in fields]
        if unknown:
            raise ModelConfigError(f"model_config has unknown keys {', '.join(unknown[:5])} (known: "
                                   f"{', '.join(fields)})")
        missing = [k for k in fields if k not in d]
        if missing:
            raise ModelConfigError(f"model_config lacks {', '.join(missing)}")
        return cls(**d).check()

    def check(self) -> ModelConfig:
        """Refuse types and sizes the network cannot or should not be built with; returns self."""
        problems = []
        if not _whole(self.vocab_size, VOCAB_SIZE, VOCAB_SIZE):
            problems.append(f"vocab_size must be {VOCAB_SIZE} (the folk-rnn v2 vocabulary), got "
                            f"{_show(self.vocab_size)}")
        if not _whole(self.n_layers, 1, MAX_LAYERS):
            problems.append(f"n_layers must be a whole number in 1..{MAX_LAYERS}, got {_show(self.n_layers)}")
        if not _whole(self.n_units, 1, MAX_UNITS):
            problems.append(f"n_units must be a whole number in 1..{MAX_UNITS}, got {_show(self.n_units)}")
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            problems.append(f"dropout must be a number in [0, 1), got {_show(dropout)}")
        if not isinstance(self.learn_init, bool):
            problems.append(f"learn_init must be true or false, got {_show(self.learn_init)}")
        if problems:
            raise ModelConfigError("model_config: " + "; ".join(problems))
        count = parameter_count(self)
        if count > MAX_PARAMETERS:
            raise ModelConfigError(f"model_config {self.n_layers}x{self.n_units} has {count:,} parameters; at "
                                   f"most {MAX_PARAMETERS:,} are allowed")
        return self


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state dict's names and shapes for ``config``, computed without allocating anything."""
    h, shapes = config.n_units, {}
    for k in range(config.n_layers):
        n_in = config.vocab_size if k == 0 else h
        shapes.update({f"layers.{k}.weight_ih": (4 * h, n_in), f"layers.{k}.weight_hh": (4 * h, h),
                       f"layers.{k}.bias": (4 * h,), f"layers.{k}.h0": (h,), f"layers.{k}.c0": (h,)})
    shapes.update({"out.weight": (config.vocab_size, h), "out.bias": (config.vocab_size,)})
    return shapes


def parameter_count(config: ModelConfig) -> int:
    """All numbers in the state dict (initial states included)."""
    return sum(math.prod(shape) for shape in expected_shapes(config).values())


def _recurrence_forward(gx: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                        keep: bool):
    """The LSTM recurrence given the input gates ``gx`` (T, B, 4H), bias included.

    Returns hs (T, B, H), and when ``keep`` also the activated gates, cell states and tanh(c)
    that the backward pass needs.
    """
    steps, batch, four_h = gx.shape
    n = four_h // 4
    hs = gx.new_empty(steps, batch, n)
    if keep:
        gates = torch.empty_like(gx)
        cs = gx.new_empty(steps, batch, n)
        tcs = gx.new_empty(steps, batch, n)
    else:  # inference: reuse one buffer per quantity
        gates = gx.new_empty(1, batch, four_h)
        cs = gx.new_empty(2, batch, n)
        tcs = gx.new_empty(1, batch, n)
    w_t = w_hh.t()
    h, c = h0, c0
    for t in range(steps):
        g = gates[t] if keep else gates[0]
        torch.addmm(gx[t], h, w_t, out=g)
        g[:, : 2 * n].sigmoid_()  # i, f
        g[:, 2 * n : 3 * n].tanh_()  # g (the cell input)
        g[:, 3 * n :].sigmoid_()  # o
        i, f, gg, o = g.chunk(4, 1)
        ct = cs[t] if keep else cs[t % 2]
        torch.mul(f, c, out=ct)
        ct.addcmul_(i, gg)
        tc = tcs[t] if keep else tcs[0]
        torch.tanh(ct, out=tc)
        torch.mul(o, tc, out=hs[t])
        h, c = hs[t], ct
    c_last = c.clone()
    if keep:
        return hs, c_last, gates, cs, tcs
    return hs, c_last, None, None, None


class _Recurrence(torch.autograd.Function):
    """LSTM recurrence over precomputed input gates, with a hand-written backward pass."""

    @staticmethod
    def forward(ctx, gx, w_hh, h0, c0, clip: float):
        hs, c_last, gates, cs, tcs = _recurrence_forward(gx, w_hh, h0, c0, keep=True)
        ctx.save_for_backward(w_hh, h0, c0, gates, cs, tcs, hs)
        ctx.clip = clip
        return hs, hs[-1].clone(), c_last

    @staticmethod
    def backward(ctx, d_hs, d_hlast, d_clast):
        w_hh, h0, c0, gates, cs, tcs, hs = ctx.saved_tensors
        steps, batch, four_h = gates.shape
        n = four_h // 4
        d_gates = torch.empty_like(gates)
        dh = d_hlast.clone() if d_hlast is not None else gates.new_zeros(batch, n)
        dc = d_clast.clone() if d_clast is not None else gates.new_zeros(batch, n)
        for t in range(steps - 1, -1, -1):
            if d_hs is not None:
                dh = dh + d_hs[t]
            a = gates[t]
            i, f, gg, o = a.chunk(4, 1)
            tc = tcs[t]
            c_prev = cs[t - 1] if t > 0 else c0
            d = d_gates[t]
            di, df, dg, do = d.chunk(4, 1)
            torch.mul(dh, tc, out=do)
            dc = dc + dh * o * (1 - tc * tc)
            torch.mul(dc, gg, out=di)
            torch.mul(dc, c_prev, out=df)
            torch.mul(dc, i, out=dg)
            dc = dc * f
            # through the nonlinearities, to the gates' pre-activations
            d[:, : 2 * n].mul_(a[:, : 2 * n] * (1 - a[:, : 2 * n]))
            d[:, 3 * n :].mul_(a[:, 3 * n :] * (1 - a[:, 3 * n :]))
            dg.mul_(1 - gg * gg)
            if ctx.clip:
                d.clamp_(-ctx.clip, ctx.clip)  # Lasagne's grad_clipping, on every step
            dh = torch.mm(d, w_hh)
        h_prev = torch.cat([h0.expand(batch, n).unsqueeze(0), hs[:-1]], 0)
        d_w = torch.mm(d_gates.reshape(-1, four_h).t(), h_prev.reshape(-1, n))
        return d_gates, d_w, dh, dc, None


def recurrence(gx: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
               clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the LSTM recurrence on input gates ``gx`` (T, B, 4H); returns (hs, h_T, c_T)."""
    # Under bf16 autocast gx may arrive in bf16; the recurrence runs in the weights' dtype.
    gx, h0, c0 = gx.to(w_hh.dtype), h0.to(w_hh.dtype), c0.to(w_hh.dtype)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (gx, w_hh, h0, c0))
    if needs_grad:
        return _Recurrence.apply(gx, w_hh, h0, c0, clip)
    hs, c_last, _, _, _ = _recurrence_forward(gx, w_hh, h0, c0, keep=False)
    return hs, hs[-1].clone(), c_last


class LSTMLayer(nn.Module):
    """One LSTM layer, torch layout and gate order (i, f, g, o), one bias per gate."""

    def __init__(self, n_in: int, n_units: int, learn_init: bool = True):
        super().__init__()
        self.n_in, self.n_units = n_in, n_units
        self.weight_ih = nn.Parameter(torch.empty(4 * n_units, n_in))
        self.weight_hh = nn.Parameter(torch.empty(4 * n_units, n_units))
        self.bias = nn.Parameter(torch.empty(4 * n_units))
        self.h0 = nn.Parameter(torch.zeros(n_units), requires_grad=learn_init)
        self.c0 = nn.Parameter(torch.zeros(n_units), requires_grad=learn_init)
        # torch's fused kernels add a second bias; it is held at zero and is not a parameter.
        self.register_buffer("zero_bias", torch.zeros(4 * n_units), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original's initialisation: Glorot-uniform input weights, orthogonal recurrent
        weights, forget-gate bias 5, an orthogonal (unit-norm random) hid_init, cell_init 0."""
        n = self.n_units
        limit = math.sqrt(6.0 / (self.n_in + n))
        self.weight_ih.uniform_(-limit, limit)
        for k in range(4):
            nn.init.orthogonal_(self.weight_hh[k * n : (k + 1) * n])
        self.bias.zero_()
        self.bias[n : 2 * n] = 5.0
        nn.init.orthogonal_(self.h0.view(1, n))
        self.c0.zero_()

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.h0.expand(batch, self.n_units), self.c0.expand(batch, self.n_units)


class FolkRNN(nn.Module):
    """folk-rnn v2: one-hot tokens -> LSTM x n_layers (dropout after each) -> dense -> softmax."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = (config or ModelConfig()).check()  # before a single tensor is allocated
        sizes = [config.vocab_size] + [config.n_units] * config.n_layers
        self.layers = nn.ModuleList(
            LSTMLayer(sizes[k], config.n_units, config.learn_init) for k in range(config.n_layers)
        )
        self.out = nn.Linear(config.n_units, config.vocab_size)
        with torch.no_grad():
            nn.init.orthogonal_(self.out.weight)
            self.out.bias.zero_()

    def num_parameters(self, exclude_initial_states: bool = True) -> int:
        return sum(
            p.numel() for name, p in self.named_parameters()
            if not (exclude_initial_states and name.rsplit(".", 1)[-1] in ("h0", "c0"))
        )

    def initial_state(self, batch: int) -> State:
        return [layer.initial_state(batch) for layer in self.layers]

    def forward(self, ids: torch.Tensor, state: State | None = None,
                grad_clip: float = 0.0) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) for token ids (B, T), and the final (h, c) of each layer.

        ``state`` (per layer (h, c), each (B, H)) continues a sequence; None starts from the
        learned initial states. Softmax is left to the loss (log-softmax is more accurate).
        ``grad_clip`` > 0 is the faithful mode: the backward pass clips each gate's gradient to
        +-grad_clip at every step (Lasagne's ``grad_clipping``); every layer then runs the per-step
        recurrence, in evaluation too, so that a run computes one way throughout.
        """
        batch = ids.shape[0]
        state = state if state is not None else self.initial_state(batch)
        x = ids.t()  # time-major (T, B) inside: every kernel below prefers it
        new_state: State = []
        for k, layer in enumerate(self.layers):
            h0, c0 = state[k]
            if k == 0:
                # x W_x for a one-hot x is a row of W_x^T: a lookup, not a matmul.
                gx = F.embedding(x, layer.weight_ih.t()) + layer.bias
                x, h_n, c_n = recurrence(gx, layer.weight_hh, h0, c0, grad_clip)
            elif grad_clip:
                gx = torch.addmm(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight_ih.t())
                gx = gx.view(x.shape[0], batch, -1)
                x, h_n, c_n = recurrence(gx, layer.weight_hh, h0, c0, grad_clip)
            else:
                weights = [layer.weight_ih, layer.weight_hh, layer.bias, layer.zero_bias]
                hx = (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous())
                x, h_n, c_n = torch._VF.lstm(x, hx, weights, True, 1, 0.0, self.training, False, False)
                h_n, c_n = h_n[0], c_n[0]
            x = F.dropout(x, self.config.dropout, self.training)
            new_state.append((h_n, c_n))
        logits = self.out(x.transpose(0, 1))
        return logits, new_state
