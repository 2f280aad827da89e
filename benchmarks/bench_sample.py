"""Sampling speed at folk-rnn v2 size: our batched sampler against a one-tune-at-a-time reference.

The reference is written like the original folk-rnn numpy sampler: one tune at a time, a row
lookup for the first layer's input, matrix-vector products per step, numpy's RNG. It runs in a
subprocess so OPENBLAS_NUM_THREADS can be set before numpy starts; on this machine OpenBLAS
matrix-vector products can be faster on one thread than on two, so both are tried and the faster
is quoted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from folkrnn.model.network import FolkRNN, ModelConfig
from folkrnn.model.sample import Sampler

REFERENCE_STEPS = 100


def reference_tokens_per_second(dtype: str, steps: int = REFERENCE_STEPS) -> float:
    """The one-at-a-time numpy sampler of the original folk-rnn, float64 or float32."""
    import numpy as np

    rng = np.random.default_rng(0)
    d = np.dtype(dtype)
    vocab, units, layers = 137, 512, 3
    scale = 0.05
    w_x = [rng.standard_normal((vocab if k == 0 else units, 4 * units)).astype(d) * scale for k in range(layers)]
    w_h = [rng.standard_normal((units, 4 * units)).astype(d) * scale for _ in range(layers)]
    b = [np.zeros(4 * units, d) for _ in range(layers)]
    w_out = rng.standard_normal((units, vocab)).astype(d) * scale
    b_out = np.zeros(vocab, d)

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    h = [np.zeros(units, d) for _ in range(layers)]
    c = [np.zeros(units, d) for _ in range(layers)]
    token = 80
    start = time.perf_counter()
    for _ in range(steps):
        x = None
        for k in range(layers):
            gates = (w_x[0][token] if k == 0 else x @ w_x[k]) + h[k] @ w_h[k] + b[k]
            i = sigmoid(gates[:units])
            f = sigmoid(gates[units:2 * units])
            g = np.tanh(gates[2 * units:3 * units])
            o = sigmoid(gates[3 * units:])
            c[k] = f * c[k] + i * g
            h[k] = o * np.tanh(c[k])
            x = h[k]
        logits = x @ w_out + b_out
        p = np.exp(logits - logits.max())
        p /= p.sum()
        token = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum()))
        token = min(token, vocab - 1)
    return steps / (time.perf_counter() - start)


def reference_in_subprocess(dtype: str, threads: int) -> float:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    code = f"from benchmarks.bench_sample import reference_tokens_per_second as r; print(r('{dtype}'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a large square matmul: the machine's practical peak for this dtype."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def steady_state(sampler: Sampler, batch: int, steps: int) -> float:
    """Tokens/s with every slot busy: tunes never end (max_tokens = steps, </s> made impossible)."""
    numbers = range(1, batch + 1)
    list(sampler.sample(range(1, min(batch, 64) + 1), batch_size=batch, max_tokens=3))  # warm up
    start = time.perf_counter()
    tokens = sum(len(t.token_ids) for t in sampler.sample(numbers, batch_size=batch, max_tokens=steps))
    return tokens / (time.perf_counter() - start)


def v2_model(end_bias: float) -> FolkRNN:
    torch.manual_seed(0)
    model = FolkRNN(ModelConfig()).eval()
    with torch.no_grad():
        model.out.bias[59] = end_bias  # </s>: -inf-like for steady state, typical for real runs
    return model


def run() -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    references = {}
    for dtype in ("float64", "float32"):
        timings = {threads: reference_in_subprocess(dtype, threads) for threads in (1, 2)}
        best = max(timings, key=timings.get)
        references[dtype] = (timings[best], best, timings)
    never_end = v2_model(-1e4)
    rows = []
    flops = Sampler(never_end).flops_per_token()
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        sampler = Sampler(never_end, dtype=dtype)
        for batch in (1, 64, 256, 1024, 2048):
            steps = 40 if batch >= 1024 else 100
            rate = steady_state(sampler, batch, steps)
            rows.append((dtype_name, batch, rate))
    # a real run with continuous batching: tunes end at their own lengths (about 150-400 tokens)
    real = v2_model(0.0)
    with torch.no_grad():
        real.out.bias[59] = -2.0
    sampler = Sampler(real)
    start = time.perf_counter()
    tunes = list(sampler.sample(range(1, 3001), batch_size=1024, max_tokens=400, seed=1))
    seconds = time.perf_counter() - start
    real_tokens = sum(len(t.token_ids) + 1 for t in tunes)
    continuous_rate = real_tokens / seconds
    steady_1024 = next(r for d, b, r in rows if d == "fp32" and b == 1024)

    ref32 = references["float32"][0]
    ref64 = references["float64"][0]
    lines = [
        f"Matmul peak measured in this run: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
        f"(2048x2048 torch.mm). One v2 token costs {flops / 1e6:.2f} MFLOP.",
        "",
        "| sampler | dtype | batch | tokens/s | GFLOP/s | % of peak | vs fp32 reference | vs float64 reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype, (rate, threads, timings) in references.items():
        lines.append(f"| reference, one tune at a time (numpy, OPENBLAS_NUM_THREADS={threads}; "
                     f"1 thread {timings[1]:.0f}, 2 threads {timings[2]:.0f}) | {dtype} | 1 | {rate:.0f} | "
                     f"{rate * flops / 1e9:.1f} | {100 * rate * flops / 1e9 / peaks['fp32']:.1f}% | "
                     f"{rate / ref32:.2f}x | {rate / ref64:.2f}x |")
    for dtype, batch, rate in rows:
        gflops = rate * flops / 1e9
        lines.append(f"| folkrnn batched | {dtype} | {batch} | {rate:.0f} | {gflops:.0f} | "
                     f"{100 * gflops / peaks[dtype]:.0f}% | {rate / ref32:.1f}x | {rate / ref64:.1f}x |")
    lines += [
        "",
        f"Continuous batching, a real run of 3,000 tunes (batch 1024, fp32, {real_tokens} tokens, mean "
        f"{real_tokens / 3000:.0f} per tune): {continuous_rate:.0f} tokens/s in {seconds:.1f} s = "
        f"{100 * continuous_rate / steady_1024:.0f}% of the fixed-batch steady state at 1024 "
        f"({steady_1024:.0f} tokens/s).",
        f"Extrapolated: 30,000 tunes of {real_tokens / 3000:.0f} tokens take "
        f"{30000 * real_tokens / 3000 / continuous_rate / 60:.1f} min in fp32 on this machine.",
    ]
    return {"name": "Sampling (issue 4)", "markdown": "\n".join(lines), "peaks": peaks,
            "references": {k: v[0] for k, v in references.items()}, "rows": rows,
            "continuous": continuous_rate}


if __name__ == "__main__":
    result = run()
    print(result["markdown"])
    print(json.dumps({"peaks": result["peaks"]}))
