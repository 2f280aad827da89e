"""``folkrnn analyze`` at folk-rnn v2 size: the full report, end to end, timed per part.

The model has random weights (v2 initialisation): the timing depends on the sizes, not on what
was learned. Two differences from a trained model, both measured here: random tunes end after
~137 tokens on average (1/137 chance of ``</s>`` per step; a trained v2 averages about that too),
and none of them is valid, so the counting part reads one tune instead of ``--counting-tunes``
valid ones; reading 100 tunes of 156 tokens is timed separately and added to the estimate.
Copying uses out/ingest when it exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from folkrnn.model.checkpoint import save_checkpoint
from folkrnn.model.network import FolkRNN, ModelConfig

TARGET_SECONDS = 600


def run(num_tunes: int = 500, ingest: str = "out/ingest", threads: int = 0) -> dict:
    from folkrnn.model.analysis.activations import FALLBACK_TUNE
    from folkrnn.model.analysis.counting import read_tunes
    from folkrnn.pipeline.analyze import add_arguments
    from folkrnn.pipeline.analyze import run as analyze

    torch.manual_seed(0)
    model = FolkRNN(ModelConfig()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "v2-random.pt")
        save_checkpoint(checkpoint, model, model.config)
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args([checkpoint, "--out", os.path.join(tmp, "report"), "--num-tunes", str(num_tunes),
                                  "--ingest", ingest, "--threads", str(threads), "--quiet"])
        start = time.perf_counter()
        analyze(args)
        seconds = time.perf_counter() - start
        import pyarrow.parquet as pq

        rows = pq.read_table(os.path.join(tmp, "report", "numbers.parquet")).to_pylist()
    parts = {r["key"]: r["value"] for r in rows if r["part"] == "timing"}
    mean_length = next(r["value"] for r in rows if r["part"] == "baseline" and r["name"] == "mean_length")
    start = time.perf_counter()
    read_tunes(model, [list(FALLBACK_TUNE)] * 100)
    counting_extra = time.perf_counter() - start
    settings = 1 + 2 * 3 + 3 * 4  # baseline, ablation top/random at 3 ks, nudging 3 targets x 4 deltas
    lines = [
        f"Full report (`folkrnn analyze`, all parts, default settings) of a v2-size model (3 x 512, random "
        f"weights), {num_tunes} tunes per setting, {settings} settings = {settings * num_tunes:,} generated tunes "
        f"(mean {mean_length:.0f} tokens), torch threads: {torch.get_num_threads()}.",
        "",
        "| part | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {part} | {value:.1f} |" for part, value in parts.items() if part != "total"]
    lines += [
        f"| **total, command end to end** (checkpoint load included) | **{seconds:.1f}** |",
        "",
        f"Counting with 100 valid tunes (a trained model) reads 99 more tunes: {counting_extra:.1f} s for 100 tunes "
        f"of {len(FALLBACK_TUNE)} tokens, so a trained model's report takes about {seconds + counting_extra:.0f} s "
        f"(target: under {TARGET_SECONDS} s).",
    ]
    return {"name": "Analysis (issue 8)", "markdown": "\n".join(lines), "seconds": seconds, "parts": parts,
            "counting_extra": counting_extra}


if __name__ == "__main__":
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--num-tunes", type=int, default=500, help="tunes per setting (default 500, the CLI's)")
    options.add_argument("--ingest", default="out/ingest")
    options.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    values = options.parse_args()
    print(run(values.num_tunes, values.ingest, values.threads)["markdown"])
    sys.exit(0)
