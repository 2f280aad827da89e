"""Batched, continuously refilled, reproducible-by-number sampling from a folk-rnn model.

Tune ``n`` of a run with seed ``s`` depends only on (weights, s, n, temperature, prime, top-k/p):

* randomness is counter-based: the uniform number for step ``t`` of tune ``n`` is a hash of
  (s, n, t), so no generator stream is shared between tunes and neither the order of tunes nor
  their batch mates change any draw;
* the draw is an inverse-CDF lookup of that uniform in the row's own softmax;
* every row's arithmetic is independent of the other rows. CPU GEMM kernels pick another code path
  (with another summation order) below 16 rows, so the batch is never smaller than
  ``MIN_ROWS``; with that, a row's logits are bitwise the same for any batch size (a test checks).

Continuous batching: when a row emits ``</s>`` or reaches ``max_tokens`` its slot takes the next
tune number at once, so the batch stays full. The step loop does no per-tune Python work: slots
are refilled with tensor indexing, and only finished tunes leave the device. Once the numbers run
out, the batch shrinks to its live rows whenever half of it is idle: the last tunes of a run (the
longest of the last batch, up to ``max_tokens`` steps) then cost what they compute, not a full
batch a step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from folkrnn.model.grammar import Form, Grammar
from folkrnn.schemas.vocab import END_ID, START_ID, TOKEN_TO_ID, TOKENS

MIN_ROWS = 16
WILDCARD = "*"
_MASK32 = 0xFFFFFFFF


@dataclass
class SampledTune:
    number: int
    token_ids: list[int]  # after <s>, without </s>; the prime included
    truncated: bool  # stopped at max_tokens before </s>
    # well-formed sampling: sum over the model's free draws of log(probability mass the grammar
    # allowed); 0 means the model's own choices were never constrained. None: unconstrained.
    constraint_log_mass: float | None = None

    @property
    def tokens(self) -> list[str]:
        return [TOKENS[i] for i in self.token_ids]


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def counter_uniform(seed: int, numbers: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Uniform floats in [0, 1) from (seed, tune number, step): the same on any device or batch."""
    seed_hash = _mix32(torch.tensor(seed & _MASK32, dtype=torch.int64, device=numbers.device))
    seed_high = _mix32(torch.tensor((seed >> 32) & _MASK32, dtype=torch.int64, device=numbers.device) ^ 0x5BD1E995)
    x = _mix32((numbers & _MASK32) ^ seed_hash)
    x = _mix32(x ^ ((numbers >> 32) & _MASK32) ^ seed_high)
    x = _mix32(x ^ (steps & _MASK32))
    x = _mix32(x ^ 0x9E3779B9)
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


def parse_prime(prime: Iterable[str] | str | None) -> list[str]:
    """A prime as tokens: a space-separated string or a list; ``*`` marks a token the model fills."""
    if prime is None:
        return []
    tokens = prime.split() if isinstance(prime, str) else list(prime)
    unknown = [t for t in tokens if t != WILDCARD and t not in TOKEN_TO_ID]
    if unknown:
        raise ValueError(f"not in the vocabulary: {' '.join(unknown)}")
    return tokens


class Sampler:
    """Holds a model's weights in the layout the step loop wants; samples many tunes at once.

    Per step: a row lookup for layer 1's input gates, then one fused (input + recurrent) matmul per
    layer, the output layer, softmax and one draw. All layers' hidden states live side by side in
    one buffer ``[h1 | h2 | h3]``, so layer k's input ``[h_{k-1}, h_k]`` is a view of it and no
    step copies activations. The cell input gate g uses tanh(x) = 2 sigmoid(2x) - 1 with its
    weights pre-scaled by 2, so one sigmoid pass covers all four gates.
    """

    def __init__(self, model, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        layers = model.layers
        self.n_layers = len(layers)
        self.n_units = n = layers[0].n_units
        scale = torch.ones(4 * n)
        scale[2 * n : 3 * n] = 2.0  # the g gate, see the class docstring
        with torch.no_grad():
            first = layers[0]
            # Layer 1: x W_x for a one-hot x is a row of W_x^T; fold the bias into that table.
            self.input_table = self._prepare((first.weight_ih.t() + first.bias) * scale)
            self.weights_t = [self._prepare(first.weight_hh.t() * scale)]
            self.biases = [None]
            for layer in layers[1:]:
                stacked = torch.cat([layer.weight_ih, layer.weight_hh], 1).t()  # (2H x 4H): [x, h] @ this
                self.weights_t.append(self._prepare(stacked * scale))
                self.biases.append(self._prepare(layer.bias * scale))
            self.h0 = torch.cat([layer.h0.detach() for layer in layers]).to(self.device, dtype)
            self.c0 = [layer.c0.detach().to(self.device, torch.float32) for layer in layers]
            self.out_t = self._prepare(model.out.weight.t())
            self.out_b = self._prepare(model.out.bias)

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(self.device, self.dtype).contiguous()

    def flops_per_token(self) -> int:
        """Multiply-adds x 2 of one step for one row (the matmuls; element-wise work excluded)."""
        h = self.n_units
        four_h = 4 * h
        return 2 * (h * four_h + (self.n_layers - 1) * 2 * h * four_h + h * self.out_t.shape[1])

    @torch.no_grad()
    def sample(
        self,
        numbers: Iterable[int],
        *,
        seed: int = 0,
        temperature: float = 1.0,
        prime: Iterable[str] | str | None = None,
        max_tokens: int = 1000,
        batch_size: int = 1024,
        top_k: int = 0,
        top_p: float = 0.0,
        well_formed: bool = False,
        form: Form | None = None,
    ) -> Iterator[SampledTune]:
        """Sample the given tune numbers; yields each tune as soon as it is finished (any order).

        ``well_formed`` (implied by a ``form``): each draw is restricted to the tokens the grammar of
        model/grammar.py allows, renormalised, so that every tune ends with ``</s>`` and is valid.
        """
        if not 0.01 <= temperature <= 10:
            raise ValueError(f"temperature must be in [0.01, 10], got {temperature}")
        prime_tokens = parse_prime(prime)
        if len(prime_tokens) >= max_tokens:
            raise ValueError("the prime is as long as max_tokens")
        grammar = Grammar(self.device, form) if well_formed or form is not None else None
        if grammar is not None:
            prime_options = grammar.check_prime(prime_tokens, max_tokens)
        queue = iter(numbers)
        rows = max(batch_size, MIN_ROWS)
        dev, dtype, n = self.device, self.dtype, self.n_units
        n_layers = self.n_layers
        # The prime as forced token ids per step (-1: the model chooses), then free choice.
        forced = torch.tensor([TOKEN_TO_ID[t] if t != WILDCARD else -1 for t in prime_tokens] + [-1],
                              dtype=torch.int64, device=dev)
        n_forced = len(prime_tokens)

        hidden = self.h0.expand(rows, n_layers * n).clone()  # [h1 | h2 | ...]
        cells = [self.c0[k].expand(rows, n).clone() for k in range(n_layers)]
        gates = torch.empty(rows, 4 * n, device=dev, dtype=dtype)
        tanh_c = torch.empty(rows, n, device=dev, dtype=torch.float32)
        logits = torch.empty(rows, self.out_t.shape[1], device=dev, dtype=dtype)
        tokens_in = torch.full((rows,), START_ID, dtype=torch.int64, device=dev)
        slot_number = torch.full((rows,), -1, dtype=torch.int64, device=dev)
        slot_step = torch.zeros(rows, dtype=torch.int64, device=dev)
        output = torch.zeros(rows, max_tokens, dtype=torch.int16, device=dev)
        arange = torch.arange(rows, device=dev)
        if grammar is not None:
            state = grammar.start(rows)
            log_mass = torch.zeros(rows, dtype=torch.float64, device=dev)

        def refill(slots: torch.Tensor) -> int:
            """Give the listed slots the next tune numbers; returns how many got one."""
            new_numbers = [number for _, number in zip(range(len(slots)), queue)]
            slot_number[slots] = -1
            if not new_numbers:
                return 0
            taken = slots[: len(new_numbers)]
            slot_number[taken] = torch.tensor(new_numbers, dtype=torch.int64, device=dev)
            slot_step[taken] = 0
            tokens_in[taken] = START_ID
            if grammar is not None:
                state.reset(taken)
                log_mass[taken] = 0.0
            hidden[taken] = self.h0
            for k in range(n_layers):
                cells[k][taken] = self.c0[k]
            return len(new_numbers)

        active = refill(arange)
        exhausted = active < rows
        inv_temperature = 1.0 / temperature
        while active:
            if exhausted and active <= rows // 2 and rows > MIN_ROWS:
                # the numbers ran out and half the batch idles: keep the live rows (a row's
                # arithmetic does not depend on its batch mates, so no tune changes)
                keep = torch.argsort((slot_number < 0).to(torch.int8), stable=True)[: max(active, MIN_ROWS)]
                rows = len(keep)
                hidden, tokens_in = hidden[keep], tokens_in[keep]
                cells = [c[keep] for c in cells]
                slot_number, slot_step, output = slot_number[keep], slot_step[keep], output[keep]
                gates = torch.empty(rows, 4 * n, device=dev, dtype=dtype)
                tanh_c = torch.empty(rows, n, device=dev, dtype=torch.float32)
                logits = torch.empty(rows, self.out_t.shape[1], device=dev, dtype=dtype)
                arange = torch.arange(rows, device=dev)
                if grammar is not None:
                    state, log_mass = state.select(keep), log_mass[keep]
            # -- one step of the network for every slot --
            torch.index_select(self.input_table, 0, tokens_in, out=gates)
            gates.addmm_(hidden[:, :n], self.weights_t[0])
            self._cell(gates, cells[0], tanh_c, hidden[:, :n])
            for k in range(1, n_layers):
                torch.addmm(self.biases[k], hidden[:, (k - 1) * n : (k + 1) * n], self.weights_t[k], out=gates)
                self._cell(gates, cells[k], tanh_c, hidden[:, k * n : (k + 1) * n])
            torch.addmm(self.out_b, hidden[:, (n_layers - 1) * n :], self.out_t, out=logits)
            scores = logits.float()
            # -- one draw per slot --
            if inv_temperature != 1.0:
                scores = scores * inv_temperature
            force = forced[slot_step.clamp(max=n_forced)]
            live = slot_number >= 0
            if grammar is not None:
                # only what keeps the tune well-formed, renormalised; empty slots draw anything
                allowed = grammar.allowed(state, slot_step, max_tokens)
                if n_forced:  # a * in the prime's header: only what the rest of the prime allows
                    in_prime = (slot_step < n_forced).unsqueeze(1)
                    allowed &= ~in_prime | prime_options[slot_step.clamp(max=n_forced - 1)]
                allowed |= ~live.unsqueeze(1)
                masked = scores.masked_fill(~allowed, float("-inf"))
                kept = torch.logsumexp(masked, -1) - torch.logsumexp(scores, -1)
                log_mass += torch.where(live & (force < 0), kept, 0.0).double()
                scores = masked
            if n_forced:
                # a wildcard inside the prime is filled with a token, never with the end of the tune
                wildcard = (slot_step < n_forced) & (force < 0)
                scores[:, END_ID].masked_fill_(wildcard, float("-inf"))
                scores[:, START_ID].masked_fill_(wildcard, float("-inf"))
            if top_k or top_p:
                scores = _filter_logits(scores, top_k, top_p)
            cdf = torch.softmax(scores, dim=-1).cumsum_(dim=-1)
            u = counter_uniform(seed, slot_number, slot_step) * cdf[:, -1]
            drawn = torch.searchsorted(cdf, u.unsqueeze(1), right=True).squeeze(1).clamp_(max=len(TOKENS) - 1)
            next_token = torch.where(force >= 0, force, drawn)
            if grammar is not None:
                grammar.advance(state, next_token)
            # -- record, and hand finished slots their next tune --
            output[arange, slot_step.clamp(max=max_tokens - 1)] = next_token.to(torch.int16)
            ended = live & (next_token == END_ID)
            full = live & ~ended & (slot_step + 1 >= max_tokens)
            done = ended | full
            slot_step += 1
            tokens_in = next_token
            if bool(done.any()):
                slots = done.nonzero().squeeze(1)
                lengths = torch.where(ended[slots], slot_step[slots] - 1, slot_step[slots]).tolist()
                numbers_done = slot_number[slots].tolist()
                truncated = full[slots].tolist()
                finished_rows = output[slots].tolist()
                masses = log_mass[slots].tolist() if grammar is not None else [None] * len(slots)
                for number, length, was_truncated, row, mass in zip(numbers_done, lengths, truncated,
                                                                    finished_rows, masses):
                    yield SampledTune(number, row[:length], was_truncated, mass)
                active -= len(numbers_done)
                given = refill(slots)
                active += given
                exhausted |= given < len(slots)

    def _cell(self, gates: torch.Tensor, c: torch.Tensor, tanh_c: torch.Tensor, h_out: torch.Tensor) -> None:
        """LSTM cell update in place (gate order i, f, g, o; g pre-scaled); writes h into ``h_out``."""
        n = self.n_units
        g32 = gates.float()  # a no-op in fp32; bf16 gates are activated in fp32
        g32.sigmoid_()
        i, f, g, o = g32[:, :n], g32[:, n : 2 * n], g32[:, 2 * n : 3 * n], g32[:, 3 * n :]
        g.mul_(2.0).sub_(1.0)  # tanh(x) = 2 sigmoid(2x) - 1
        c.mul_(f).addcmul_(i, g)
        torch.tanh(c, out=tanh_c)
        torch.mul(o, tanh_c, out=h_out)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_in_order(sampler: Sampler, numbers: list[int], **kwargs) -> list[SampledTune]:
    """Sample and return the tunes in the order of ``numbers``."""
    found = {t.number: t for t in sampler.sample(numbers, **kwargs)}
    return [found[n] for n in numbers]
