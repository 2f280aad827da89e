"""Run the selected parts over one model and write the folder: PNGs, numbers.parquet (long
format: part, name, key, value), report.md and report.html (each plot with its sentence)."""

from __future__ import annotations

import datetime
import html
import importlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict

from folkrnn.model.analysis.common import PARTS, AnalysisSettings, Context, Numbers, Section
from folkrnn.model.analysis.copying import MissingCorpus

MODULES = {part: f"folkrnn.model.analysis.{part}" for part in PARTS}


def run_analysis(model, out_dir: str, parts: tuple[str, ...] = PARTS, settings: AnalysisSettings | None = None,
                 source: str = "", log: Callable[[str], None] | None = None, strict: bool = False) -> dict:
    """Analyse ``model`` into ``out_dir``. Returns {"sections", "numbers", "seconds" (per part), "report"}.

    A part whose data is missing (copying without an ingest dataset) is noted in the report and
    skipped, or raises MissingCorpus when ``strict`` (the user asked for it by name).
    """
    settings = settings or AnalysisSettings()
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    numbers = Numbers()
    ctx = Context(model, settings, out_dir, numbers, log)
    sections: list[Section] = []
    seconds: dict[str, float] = {}
    for part in PARTS:
        if part not in parts:
            continue
        if log:
            log(f"{part} ...")
        start = time.perf_counter()
        try:
            section = importlib.import_module(MODULES[part]).analyze(ctx)
        except MissingCorpus as err:
            if strict:
                raise
            section = Section(part, part.capitalize(), text=[f"Skipped: {err}."])
        seconds[part] = time.perf_counter() - start
        numbers.add("timing", "seconds", part, seconds[part])
        sections.append(section)
    baseline = ctx.baseline_section()
    if baseline is not None:
        sections.insert(0, baseline)
    total = sum(seconds.values())
    numbers.add("timing", "seconds", "total", total)
    numbers.write(os.path.join(out_dir, "numbers.parquet"))
    header = _header(model, settings, source, seconds)
    markdown = render_markdown(header, sections)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown)
    with open(os.path.join(out_dir, "report.html"), "w", encoding="utf-8") as handle:
        handle.write(render_html(header, sections))
    return {"sections": sections, "numbers": numbers, "seconds": seconds, "report": markdown}


def _header(model, settings: AnalysisSettings, source: str, seconds: dict[str, float]) -> list[str]:
    config = model.config
    shown = {k: v for k, v in asdict(settings).items() if k != "tune"}
    timing = ", ".join(f"{part} {s:.1f} s" for part, s in seconds.items())
    return [
        f"Model: {source or 'in memory'}; {config.n_layers} layers x {config.n_units} units, "
        f"{model.num_parameters():,} parameters. Written {datetime.datetime.now().isoformat(timespec='seconds')}.",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()) + ".",
        f"Time: {timing} (total {sum(seconds.values()):.1f} s). Every number is in numbers.parquet "
        "(columns part, name, key, value).",
    ]


def render_markdown(header: list[str], sections: list[Section]) -> str:
    lines = ["# folk-rnn model analysis", ""]
    lines += [f"{line}  " for line in header] + [""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        lines += [" ".join(section.text), ""] if section.text else []
        for figure in section.figures:
            lines += [f"![{figure.file}]({figure.file})", "", figure.caption, ""]
        if section.table:
            lines += [section.table, ""]
    return "\n".join(lines)


def render_html(header: list[str], sections: list[Section]) -> str:
    def inline(text: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))

    out = ["<!doctype html><meta charset='utf-8'><title>folk-rnn model analysis</title>",
           "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
           "figure{display:flex;gap:1.5em;align-items:center;margin:1.5em 0}figure img{max-width:70%}"
           "figcaption{max-width:30%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
           "</style>", "<h1>folk-rnn model analysis</h1>"]
    out += [f"<p>{inline(line)}</p>" for line in header]
    for section in sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            out.append(f"<p>{inline(' '.join(section.text))}</p>")
        for figure in section.figures:
            out.append(f"<figure><img src='{html.escape(figure.file)}' alt='{html.escape(figure.file)}'>"
                       f"<figcaption>{inline(figure.caption)}</figcaption></figure>")
        if section.table:
            out.append(_table_html(section.table, inline))
    return "\n".join(out) + "\n"


def _table_html(table: str, inline: Callable[[str], str]) -> str:
    rows = [[c.replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in table.splitlines()]
    body = [r for i, r in enumerate(rows) if i != 1]  # drop the Markdown alignment row
    cells = ["<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{inline(c.strip())}</{'th' if i == 0 else 'td'}>"
                              for c in row) + "</tr>" for i, row in enumerate(body)]
    return "<table>" + "".join(cells) + "</table>"
