"""Local generation on the machine's cores (issue 17): one worker process per core against one
process with a thread per core, and a whole run through ``folkrnn generate --workers 2``.

Measured in one run, all fp32:

1. the fp32 matmul peak of the cores (2048x2048 torch.mm): one process with a thread per core, and
   a 1-thread process per core side by side (their sum); the higher is the peak;
2. steady-state sampling (tunes that never end, every slot busy, batch 1024 a process) of a v2-size
   model (3 x 512, random weights) and of the demo model (model/demo.pt, its </s> made impossible):
   one process x a thread per core against a 1-thread process per core, side by side;
3. a real run: ``folkrnn generate --workers N`` (N = the cores) of 30,000 tunes of the v2-size model
   with the </s> logit biased so tunes average about 170 tokens (continuous batching, shards written),
   timed end to end in this process, against the steady state of 2.

Targets: steady state of a process per core >= 85% of the matmul peak; the real run >= 90% of that
steady state. FOLKRNN_BENCH_WORKERS_TUNES sets the real run's tunes (a quick check: 2000).
"""

from __future__ import annotations

import os
import tempfile
import time

import pyarrow.parquet as pq
import torch

from benchmarks.bench_sample import steady_state, v2_model
from folkrnn.model.generate import load_model
from folkrnn.model.sample import Sampler
from folkrnn.pipeline.generate_workers import model_bytes, model_from_bytes, usable_cores
from folkrnn.schemas.vocab import END_ID

DEMO = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model", "demo.pt")
TUNES = int(os.environ.get("FOLKRNN_BENCH_WORKERS_TUNES", "30000"))
END_BIAS = -0.45  # on the random v2 model: tunes of about 170 tokens (median about 100, a long tail)
BATCH = 1024


# --- measured in spawned processes, started together ---------------------------------------------
def _matmul(threads: int, barrier, results, size: int = 2048, repeats: int = 20) -> None:
    """As bench_sample.matmul_peak, timed on the clock all processes share."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    barrier.wait()
    start = time.monotonic()
    for _ in range(repeats):
        a @ b
    results.put((2 * size**3 * repeats, start, time.monotonic()))


def _steady(threads: int, weights: bytes, steps: int, barrier, results) -> None:
    torch.set_num_threads(threads)
    sampler = Sampler(model_from_bytes(weights))
    steady_state(sampler, BATCH, 3)  # warm up
    barrier.wait()
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
    tokens = sum(len(t.token_ids) for t in sampler.sample(range(1, BATCH + 1), batch_size=BATCH, max_tokens=steps))
    results.put((tokens, start, time.monotonic()))


def side_by_side(target, processes: int, *args) -> list:
    """Run ``target(*args, barrier, results)`` in ``processes`` spawned processes released together."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    procs = [context.Process(target=target, args=(*args, barrier, results), daemon=True) for _ in range(processes)]
    for proc in procs:
        proc.start()
    try:
        found = [results.get(timeout=1800) for _ in procs]
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    return found


def overall_rate(found: list[tuple[float, float, float]]) -> float:
    """(work, start, end) of processes side by side -> all their work over the time from the first
    start to the last end (a process that ran while another waited does not count twice)."""
    return sum(w for w, _, _ in found) / (max(end for _, _, end in found) - min(start for _, start, _ in found))


def peak(cores: int) -> tuple[float, float]:
    """GFLOP/s of (one process x ``cores`` threads, ``cores`` 1-thread processes side by side)."""
    one = overall_rate(side_by_side(_matmul, 1, cores)) / 1e9
    many = overall_rate(side_by_side(_matmul, cores, 1)) / 1e9
    return one, many


def steady(weights: bytes, processes: int, threads: int, steps: int) -> float:
    """Tokens/s of ``processes`` samplers of ``threads`` threads each, side by side: all their tokens
    over the time from the first start to the last end."""
    return overall_rate(side_by_side(_steady, processes, threads, weights, steps))


def demo_never_ending():
    model = load_model(DEMO)
    with torch.no_grad():
        model.out.bias[END_ID] = -1e4
    return model


# --- the real run -----------------------------------------------------------------------------------
def real_run(workers: int, tunes: int) -> tuple[float, int, float, int]:
    """(seconds, tokens, mean tokens a tune, truncated tunes) of ``folkrnn generate --workers``."""
    from folkrnn.model.checkpoint import save_checkpoint
    from folkrnn.pipeline import cli

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as folder:
        checkpoint = os.path.join(folder, "v2.pt")
        model = v2_model(END_BIAS)
        save_checkpoint(checkpoint, model, model.config)
        out = os.path.join(folder, "run")
        start = time.perf_counter()
        code = cli.main(["generate", checkpoint, "--out", out, "--num-tunes", str(tunes), "--workers",
                         str(workers), "--batch-size", str(BATCH), "--quiet"])
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"folkrnn generate failed (exit code {code})")
        table = pq.read_table(os.path.join(out, "generated"), columns=["length", "truncated"])
    lengths, truncated = table.column("length").to_pylist(), table.column("truncated").to_pylist()
    # every step is a token computed: the </s> of a tune that ended is one more
    tokens = sum(lengths) + sum(not t for t in truncated)
    return seconds, tokens, sum(lengths) / len(lengths), sum(truncated)


def run() -> dict:
    cores = usable_cores()
    started = time.perf_counter()
    peak_threads, peak_processes = peak(cores)
    best_peak = max(peak_threads, peak_processes)
    models = {"v2 size (3 x 512, random weights)": (v2_model(-1e4), 40),
              "demo model (model/demo.pt, 3 x 256)": (demo_never_ending(), 120)}
    rows = []
    for name, (model, steps) in models.items():
        weights = model_bytes(model)
        flops = Sampler(model).flops_per_token()
        threads = steady(weights, 1, cores, steps)
        processes = steady(weights, cores, 1, steps)
        rows.append((name, flops, threads, processes))
    seconds, tokens, mean_length, truncated = real_run(cores, TUNES)
    real_rate = tokens / seconds
    v2_steady = rows[0][3]
    v2_gflops = v2_steady * rows[0][1] / 1e9

    lines = [
        f"fp32 matmul peak on {cores} cores, measured in this run (2048x2048 torch.mm): one process x {cores} "
        f"threads {peak_threads:.0f} GFLOP/s; {cores} 1-thread processes side by side {peak_processes:.0f} "
        f"GFLOP/s (sum). Peak used below: {best_peak:.0f} GFLOP/s.",
        "",
        f"Steady state, batch {BATCH} a process, fp32 (every slot busy):",
        "",
        f"| model | 1 process x {cores} threads, tokens/s | {cores} processes x 1 thread, tokens/s | gain | "
        "processes: GFLOP/s | % of peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, flops, threads, processes in rows:
        lines.append(f"| {name} | {threads:,.0f} ({100 * threads * flops / 1e9 / best_peak:.0f}% of peak) | "
                     f"{processes:,.0f} | {100 * (processes / threads - 1):+.0f}% | {processes * flops / 1e9:.0f} | "
                     f"{100 * processes * flops / 1e9 / best_peak:.0f}% |")
    lines += [
        "",
        f"A real run, `folkrnn generate --workers {cores}` (continuous batching, batch {BATCH} a worker, shards "
        f"written; timed in this process from the command's start to its end): {TUNES:,} tunes of the v2-size "
        f"model (</s> logit {END_BIAS:+}), {tokens:,} tokens, mean {mean_length:.0f} a tune, {truncated} stopped "
        f"at 1000: {seconds / 60:.1f} min, {real_rate:,.0f} tokens/s = {100 * real_rate / v2_steady:.0f}% of "
        f"the steady state of {cores} processes.",
        "",
        f"Targets: steady state of a process per core >= 85% of the matmul peak (v2 size: "
        f"{100 * v2_gflops / best_peak:.0f}%); the real run >= 90% of that steady state "
        f"({100 * real_rate / v2_steady:.0f}%). Runtime {(time.perf_counter() - started) / 60:.1f} min.",
    ]
    return {"name": "Generation workers (issue 17)", "markdown": "\n".join(lines)}


if __name__ == "__main__":
    print(run()["markdown"])
