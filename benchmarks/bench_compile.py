"""Compiling tune books: ten volumes of 3,000 tunes (ABC, PDF and corpus), timed by stage.

The tunes are the test suite's synthetic generated dataset (eight kinds of tune varied per
number, 10% broken), 30,000 of them, so the numbers are reproducible without a trained model.
Ghostscript is also timed on one volume's PostScript both ways side by side (issue 16): as
abcm2ps wrote it with the old command, and with the glyphs as forms and the current command.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

# The ghostscript command before issue 16 (the PostScript as abcm2ps wrote it).
OLD_GS = ["gs", "-q", "-dBATCH", "-dNOPAUSE", "-dSAFER", "-sDEVICE=pdfwrite"]


def _compile(data: str, out: str, *extra: str) -> float:
    """Wall seconds of ``folkrnn compile DATA --out OUT ...`` (its printout is not wanted here)."""
    from tests.test_books import run_compile

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = run_compile(data, "--out", out, "--quiet", *extra)
    if status != 0:
        raise RuntimeError(f"compile {' '.join(extra)} failed with status {status}")
    return time.perf_counter() - start


def _seconds(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def ghostscript_old_and_new(abc: str, entries: list, folder: str, rounds: int = 3) -> list[str]:
    """One volume's PostScript through ghostscript the old way and the new, runs interleaved so
    both see the same load; a table of PDF size and median seconds."""
    from folkrnn.pipeline.typeset import GS_PDF
    from folkrnn.transforms.abc.postscript_glyphs import reuse_glyphs
    from folkrnn.transforms.abc.typeset_source import typeset_source

    source, _ = typeset_source(abc, "Benchmark Book", 1, 10, entries, None)
    paths = {name: os.path.join(folder, name) for name in ("volume.abc", "plain.ps", "forms.ps", "old.pdf", "new.pdf")}
    with open(paths["volume.abc"], "w", encoding="utf-8") as handle:
        handle.write(source)
    subprocess.run(["abcm2ps", "-S", "-O", paths["plain.ps"], paths["volume.abc"]], capture_output=True, timeout=300)
    with open(paths["plain.ps"], encoding="latin-1") as handle:
        forms = reuse_glyphs(handle.read())[0]
    with open(paths["forms.ps"], "w", encoding="latin-1") as handle:
        handle.write(forms)
    commands = {"old": [*OLD_GS, f"-sOutputFile={paths['old.pdf']}", paths["plain.ps"]],
                "new": [*GS_PDF, f"-sOutputFile={paths['new.pdf']}", paths["forms.ps"]]}
    runs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for _ in range(rounds):
        for way, command in commands.items():
            runs[way].append(_seconds(command))

    def cell(way: str, k: int) -> str:
        values = [r[k] for r in runs[way]]
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    mb = {way: os.path.getsize(paths[f"{way}.pdf"]) / 1e6 for way in runs}
    return [
        f"| ghostscript on one volume, side by side ({rounds} runs each, interleaved) | before (PostScript as abcm2ps "
        "wrote it) | now (glyphs as forms, no date or ID) |",
        "|---|---:|---:|",
        f"| PDF size, MB | {mb['old']:.1f} | {mb['new']:.1f} |",
        f"| wall seconds, median (min-max) | {cell('old', 0)} | {cell('new', 0)} |",
        f"| CPU seconds, median (min-max) | {cell('old', 1)} | {cell('new', 1)} |",
    ]


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
        side_by_side = ghostscript_old_and_new(abc, entries, tmp)

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
        "",
        *side_by_side,
    ]
    return {"name": "Compile (issue 6)", "markdown": "\n".join(lines), "abc_seconds": abc_seconds,
            "pdf_seconds": pdf_seconds, "ten_volumes_seconds": full, "per_volume_seconds": per_volume,
            "rerun_seconds": rerun}


if __name__ == "__main__":
    print(run()["markdown"])
