"""Compiling tune books: ten volumes of 3,000 tunes (ABC, PDF and corpus), timed by stage.

The tunes are the test suite's synthetic generated dataset (eight kinds of tune varied per
number, 10% broken), 30,000 of them, so the numbers are reproducible without a trained model.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import tempfile
import time


def _compile(data: str, out: str, *extra: str) -> float:
    """Wall seconds of ``folkrnn compile DATA --out OUT ...`` (its printout is not wanted here)."""
    from tests.test_books import run_compile

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = run_compile(data, "--out", out, "--quiet", *extra)
    if status != 0:
        raise RuntimeError(f"compile {' '.join(extra)} failed with status {status}")
    return time.perf_counter() - start


def run() -> dict:
    from folkrnn.pipeline.books import validated_table, with_titles_and_abc
    from folkrnn.pipeline.typeset import typeset_volume
    from folkrnn.transforms.abc.typeset_source import Entry
    from folkrnn.transforms.abc.volume import volume_abc
    from tests.test_books import generated_table, write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = write_dataset(os.path.join(tmp, "generated"), range(1, 30001), shards=4)
        make_data = time.perf_counter() - start

        # One volume by stage, in this process.
        table = with_titles_and_abc(validated_table(generated_table(range(1, 3001))))
        rows = table.select(["number", "title", "meter", "mode", "tokens"]).to_pylist()
        start = time.perf_counter()
        abc = volume_abc(rows, 1, 10, "Benchmark Book")
        abc_seconds = time.perf_counter() - start
        entries = [Entry(r["number"], r["title"], r["meter"], r["mode"]) for r in rows]
        start = time.perf_counter()
        typeset = typeset_volume(abc, os.path.join(tmp, "one.pdf"), volume=1, n_volumes=10,
                                 book_title="Benchmark Book", entries=entries)
        pdf_seconds = time.perf_counter() - start

        # Ten volumes through the command, as a user runs it.
        no_pdf = _compile(data, os.path.join(tmp, "abc-only"), "--no-pdf")
        full = _compile(data, os.path.join(tmp, "full"), "--jobs", "2")
        rerun = _compile(data, os.path.join(tmp, "full"), "--jobs", "2")
        reports = [json.load(open(p, encoding="utf-8"))
                   for p in sorted(glob.glob(os.path.join(tmp, "full", "volumes", "*.report.json")))]
    per_volume = [r["seconds"]["total"] for r in reports]
    gs = [r["seconds"]["ghostscript"] for r in reports]
    lines = [
        "| compile, 3,000 tunes a volume | seconds |",
        "|---|---:|",
        f"| ABC text of one volume (3,000 tunes, {len(abc) / 1e6:.1f} MB) | {abc_seconds:.2f} |",
        f"| PDF of one volume ({typeset.page_count} pages): two abcm2ps passes | "
        f"{typeset.seconds['abcm2ps_pass1'] + typeset.seconds['abcm2ps_pass2']:.2f} |",
        f"| PDF of one volume: ghostscript | {typeset.seconds['ghostscript']:.2f} |",
        f"| PDF of one volume, all | {pdf_seconds:.2f} |",
        f"| ten volumes, ABC and corpus only (`--no-pdf`), wall | {no_pdf:.1f} |",
        f"| ten volumes with PDFs, 2 processes, wall | {full:.1f} |",
        f"| work per volume in that run: mean (min-max) | {sum(per_volume) / len(per_volume):.1f} "
        f"({min(per_volume):.1f}-{max(per_volume):.1f}) |",
        f"| of which ghostscript, mean | {sum(gs) / len(gs):.1f} |",
        f"| re-run, all ten volumes up to date | {rerun:.1f} |",
        "",
        f"Target: well under a minute of work per volume; measured {max(per_volume):.1f} s at most. "
        f"(Making the 30,000-tune test dataset took {make_data:.1f} s, not counted.)",
    ]
    return {"name": "Compile (issue 6)", "markdown": "\n".join(lines), "abc_seconds": abc_seconds,
            "pdf_seconds": pdf_seconds, "ten_volumes_seconds": full, "per_volume_seconds": per_volume,
            "rerun_seconds": rerun}


if __name__ == "__main__":
    print(run()["markdown"])
