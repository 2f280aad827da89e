"""The pages as HTML: ``string.Template`` templates, every value escaped with ``html.escape``.

No JavaScript: forms are plain GET forms (a search or a composition is a URL one can keep), the
audio is an ``<audio>`` element, the notation inline SVG made on the server. The one stylesheet
is ``STYLE``, served at ``/style.css``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from string import Template
from typing import Any
from urllib.parse import urlencode

from folkrnn.schemas.vocab import METERS, MODES

MODE_NAMES = {"maj": "major", "min": "minor", "dor": "dorian", "mix": "mixolydian"}

STYLE = """
body { font-family: Georgia, 'DejaVu Serif', serif; margin: 0; color: #222; background: #fbfaf7; }
header { background: #2f4f4f; color: #fff; padding: 0.6em 1.5em; }
header a { color: #fff; margin-right: 1.2em; text-decoration: none; }
header .brand { font-weight: bold; font-size: 1.15em; }
main { max-width: 62em; margin: 0 auto; padding: 1em 1.5em 3em; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; margin: 0.2em 0 0.8em; }
.error { background: #fde8e8; border: 1px solid #e0a0a0; padding: 0.6em 1em; border-radius: 4px; }
.note { background: #eef4ee; border: 1px solid #b5cdb5; padding: 0.4em 1em; border-radius: 4px; }
form.filters { display: flex; flex-wrap: wrap; gap: 0.6em 1.2em; align-items: end; margin: 1em 0; }
form.filters label, form.compose label { display: flex; flex-direction: column; font-size: 0.85em; color: #444; }
form.compose { display: grid; grid-template-columns: repeat(auto-fill, minmax(11em, 1fr)); gap: 0.7em 1.2em;
               align-items: end; margin: 1em 0; }
form.compose label.wide { grid-column: 1 / -1; }
form.compose label.check { flex-direction: row; gap: 0.4em; align-items: center; }
input, select, button { font: inherit; padding: 0.2em 0.3em; }
button { background: #2f4f4f; color: #fff; border: 0; border-radius: 4px; padding: 0.35em 1em; cursor: pointer; }
table.tunes { border-collapse: collapse; width: 100%; font-size: 0.92em; }
table.tunes th, table.tunes td { text-align: left; padding: 0.25em 0.6em; border-bottom: 1px solid #e4e4e4; }
table.tunes td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pages a, .pages span { margin-right: 0.8em; }
.sheet { background: #fff; border: 1px solid #ddd; padding: 0.5em; margin: 0.8em 0; }
svg.notation { width: 100%; height: auto; display: block; }
.player { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin: 0.6em 0; }
.player audio { width: 24em; max-width: 100%; }
pre.abc { background: #fff; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; font-size: 0.9em; }
dl.findings { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 1em; }
dl.findings dt { color: #555; }
.valid { color: #1d6b1d; font-weight: bold; }
.invalid { color: #a11; font-weight: bold; }
code.command { display: block; background: #fff; border: 1px solid #ddd; padding: 0.5em; overflow-x: auto; }
"""

LAYOUT = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title - folkrnn</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header><a class="brand" href="/">folkrnn</a>$nav</header>
<main>
$body
</main>
</body>
</html>
""")


def url(path: str, params: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> str:
    """``path?a=1&b=2`` with the empty values left out (escape it for an attribute)."""
    items = params.items() if isinstance(params, Mapping) else params
    kept = [(k, str(v)) for k, v in items if v not in (None, "")]
    return path + ("?" + urlencode(kept) if kept else "")


def page(title: str, body: str, datasets: Sequence[str] = (), compose: bool = False) -> str:
    nav = "".join(f'<a href="{escape(url("/browse", {"d": name}))}">{escape(name)}</a>' for name in datasets)
    nav += '<a href="/compose">Compose</a>' if compose else ""
    return LAYOUT.substitute(title=escape(title), nav=nav, body=body)


def error_block(message: str) -> str:
    return f'<p class="error">{escape(message)}</p>'


def error_page(status: int, message: str, datasets: Sequence[str] = (), compose: bool = False) -> str:
    heading = {400: "That cannot be shown", 404: "Not found"}.get(status, "Something went wrong")
    body = f"<h1>{heading}</h1>\n{error_block(message)}\n<p><a href=\"/\">Back to the start</a></p>"
    return page(heading, body, datasets, compose)


# --- home ------------------------------------------------------------------------------------------
def home(datasets: Sequence[tuple[str, str, int]], composer: str | None, compose_problem: str | None) -> str:
    """``datasets``: (name, path, tunes) of each."""
    rows = "".join(f'<li><a href="{escape(url("/browse", {"d": name}))}">{escape(name)}</a>: {tunes:,} tunes '
                   f"<small>({escape(path)})</small></li>" for name, path, tunes in datasets)
    listing = (f"<ul>{rows}</ul>" if rows else
               "<p>No dataset is served. Give some to <code>folkrnn serve</code>, e.g. "
               "<code>folkrnn serve out/compiled/corpus out/generated</code>.</p>")
    if composer:
        compose = (f'<p><a href="/compose">Compose new tunes</a> with {escape(composer)}, as '
                   "<code>folkrnn generate</code> would.</p>")
    else:
        compose = f"<p>Composing is off: {escape(compose_problem or 'no model')}.</p>"
    body = f"<h1>Tune books</h1>\n{listing}\n<h2>Compose</h2>\n{compose}"
    return page("Tune books", body, [d[0] for d in datasets], composer is not None)


# --- browse ----------------------------------------------------------------------------------------
def _select(name: str, label: str, options: Iterable[tuple[str, str]], chosen: str) -> str:
    items = "".join(f'<option value="{escape(value)}"{" selected" if value == chosen else ""}>{escape(text)}</option>'
                    for value, text in options)
    return f'<label>{escape(label)}<select name="{escape(name)}">{items}</select></label>'


def _field(name: str, label: str, value: str, size: int = 12, placeholder: str = "") -> str:
    return (f'<label>{escape(label)}<input name="{escape(name)}" value="{escape(value)}" size="{size}" '
            f'placeholder="{escape(placeholder)}"></label>')


def filter_form(dataset: str, filters: Sequence[Any], choices: Mapping[str, list], query: Mapping[str, str]) -> str:
    parts = [f'<input type="hidden" name="d" value="{escape(dataset)}">']
    for spec in filters:
        value = query.get(spec.param, "")
        if spec.kind == "choice":
            shown = [(str(v), MODE_NAMES.get(str(v), str(v)) if spec.param == "mode" else str(v))
                     for v in choices.get(spec.param, [])]
            parts.append(_select(spec.param, spec.label, [("", "any"), *shown], value))
        elif spec.kind == "bool":
            parts.append(_select(spec.param, spec.label, [("", "any"), ("yes", "yes"), ("no", "no")], value))
        elif spec.kind == "words":
            parts.append(_field(spec.param, spec.label, value, 18, "e.g. piper"))
        else:
            parts.append(_field(spec.param, spec.label, value, 10, "488 or 1-100"))
    parts.append("<button>Search</button>")
    return f'<form class="filters" method="get" action="/browse">{"".join(parts)}</form>'


COLUMNS = (("number", "No."), ("id", "Id"), ("title", "Title"), ("tune_type", "Type"), ("meter", "Meter"),
           ("key", "Key"), ("mode", "Mode"), ("form", "Form"), ("valid", "Valid"), ("volume", "Vol."),
           ("page", "Page"), ("collection", "Collection"))


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else '<span class=invalid>no</span>'}</td>"
    if name == "mode":
        value = MODE_NAMES.get(value, value)
    numeric = isinstance(value, (int, float))
    return f'<td{" class=num" if numeric else ""}>{escape(str(value))}</td>'


def browse(dataset: str, path: str, filters: Sequence[Any], choices: Mapping[str, list], query: Mapping[str, str],
           rows: list[dict], total: int, page_number: int, page_size: int, key_column: str,
           datasets: Sequence[str], compose: bool, error: str | None = None) -> str:
    form = filter_form(dataset, filters, choices, query)
    if error:
        return page(f"{dataset}: search", f"<h1>{escape(dataset)}</h1>\n{form}\n{error_block(error)}", datasets,
                    compose)
    columns = [(name, label) for name, label in COLUMNS if rows and name in rows[0]]
    head = "".join(f"<th>{escape(label)}</th>" for _, label in columns)
    lines = []
    for row in rows:
        link = escape(url("/tune", {"d": dataset, ("n" if key_column == "number" else "id"): row[key_column]}))
        cells = []
        for name, _ in columns:
            cell = _cell(name, row[name])
            if name in ("title", key_column) and row[name] is not None:
                cell = f'<td><a href="{link}">{escape(str(row[name]))}</a></td>'
            cells.append(cell)
        lines.append("<tr>" + "".join(cells) + "</tr>")
    first = (page_number - 1) * page_size + 1
    shown = (f"Tunes {first:,}-{first + len(rows) - 1:,} of {total:,}" if rows else "No tune matches.")
    kept = {k: v for k, v in query.items() if k not in ("page", "d") and v}
    pager = []
    last = max(1, -(-total // page_size))
    if page_number > 1:
        pager.append(f'<a href="{escape(url("/browse", {"d": dataset, **kept, "page": page_number - 1}))}">previous</a>')
    pager.append(f"<span>page {page_number} of {last}</span>")
    if page_number < last:
        pager.append(f'<a href="{escape(url("/browse", {"d": dataset, **kept, "page": page_number + 1}))}">next</a>')
    table = f'<table class="tunes"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>' if rows else ""
    body = (f"<h1>{escape(dataset)}</h1>\n<p class=meta>{escape(path)}</p>\n{form}\n<p>{shown}</p>\n{table}\n"
            f'<p class="pages">{"".join(pager)}</p>')
    return page(f"{dataset}: search", body, datasets, compose)


# --- a tune ----------------------------------------------------------------------------------------
def key_form(action: str, params: Mapping[str, Any], choices: Sequence[str], labels: Mapping[str, str],
             chosen: str) -> str:
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(str(v))}">'
                     for k, v in params.items() if k != "key" and v not in (None, ""))
    options = list(choices) + ([chosen] if chosen not in choices else [])
    select = _select("key", "Key", [(c, labels.get(c, c)) for c in options], chosen)
    return f'<form class="filters" method="get" action="{escape(action)}">{hidden}{select}<button>Show</button></form>'


def findings_block(findings: Any) -> str:
    verdict = ('<span class="valid">valid</span>' if findings.valid else
               '<span class="invalid">not well-formed</span>')
    items = [("verdict", verdict), ("form", escape(findings.form or "-")),
             ("bars", escape(str(findings.bar_count))),
             ("standard form", "yes (AABB, 8 + 8 bars)" if findings.standard_form else "no"),
             ("ends on the tonic", "yes" if findings.ends_on_tonic else "no")]
    if findings.pickup:
        items.append(("pickup", f"{findings.pickup:g} eighth{'' if findings.pickup == 1 else 's'}"))
    sections = ", ".join(f"{s['label']}: {s['bars']} bars{' repeated' if s['repeats'] else ''}"
                         f"{' with endings' if s['has_endings'] else ''}" for s in findings.sections)
    if sections:
        items.append(("sections", escape(sections)))
    body = "".join(f"<dt>{escape(label)}</dt><dd>{value}</dd>" for label, value in items)
    problems = ""
    if findings.problems:
        lines = "".join(f"<li>{escape(p['code'].replace('_', ' '))}"
                        f"{' (bar ' + str(p['bar']) + ')' if p['bar'] >= 0 else ''}: {escape(p['message'])}</li>"
                        for p in findings.problems[:50])
        problems = f"<p>Problems:</p><ul>{lines}</ul>"
    return f'<dl class="findings">{body}</dl>{problems}'


def tune_section(tune: Any, notation: str | None, notation_error: str | None, media: Mapping[str, str],
                 audio_problem: str | None, midi_problem: str | None, key_selector: str) -> str:
    """The tune: title, facts, key choice, notation, player and downloads, ABC, findings.

    ``notation`` is cleaned SVG markup (``media.clean_svg``), inserted as it is; ``media`` holds the
    URLs of the ``audio``, ``midi`` and ``abc`` files."""
    mode = MODE_NAMES.get(tune.mode or "", tune.mode or "")
    described = [tune.tune_type, tune.meter, f"key {tune.key}" if tune.key else None, mode]
    facts = " &middot; ".join(escape(str(d)) for d in described if d)
    extra = " &middot; ".join(f"{escape(label)} {escape(value)}" for label, value in tune.facts)
    drawing = (f'<div class="sheet">{notation}</div>' if notation is not None
               else error_block(f"No notation: {notation_error}"))
    player = (f'<audio controls preload="none" src="{escape(media["audio"])}"></audio>' if not audio_problem
              else f"<span>No audio: {escape(audio_problem)}</span>")
    downloads = [f'<a href="{escape(media["abc"])}" download>ABC</a>']
    if not midi_problem:
        downloads.insert(0, f'<a href="{escape(media["midi"])}" download>MIDI</a>')
    if media.get("generated"):
        downloads.append(f'<a href="{escape(media["generated"])}" download>ABC as generated</a>')
    if media.get("pdf"):
        downloads.append(f'<a href="{escape(media["pdf"])}">book page (PDF)</a>')
    return (f"<h1>{escape(str(tune.number))}. {escape(tune.title)}</h1>\n"
            f'<p class="meta">{facts}{"<br>" + extra if extra else ""}</p>\n{key_selector}\n{drawing}\n'
            f'<div class="player">{player}<span>Download: {" &middot; ".join(downloads)}</span></div>\n'
            f'<h2>ABC</h2>\n<pre class="abc">{escape(tune.abc)}</pre>\n'
            f"<h2>Validator</h2>\n{findings_block(tune.findings)}")


def tune_page(dataset: str, section: str, before: str | None, after: str | None, search: str,
              datasets: Sequence[str], compose: bool, title: str) -> str:
    links = [f'<a href="{escape(search)}">{escape(dataset)}</a>']
    if before:
        links.append(f'<a href="{escape(before)}">previous tune</a>')
    if after:
        links.append(f'<a href="{escape(after)}">next tune</a>')
    body = f'<p class="pages">{"".join(links)}</p>\n{section}'
    return page(title, body, datasets, compose)


# --- compose ---------------------------------------------------------------------------------------
def compose_form(values: Mapping[str, str], well_formed: bool) -> str:
    meters = [("", "the model's choice"), *((m, m) for m in METERS)]
    modes = [("", "the model's choice"), *((m, MODE_NAMES[m]) for m in MODES)]
    checked = " checked" if well_formed else ""
    return (
        '<form class="compose" method="get" action="/compose"><input type="hidden" name="compose" value="1">'
        + _select("meter", "Meter", meters, values.get("meter", ""))
        + _select("mode", "Mode", modes, values.get("mode", ""))
        + _field("seed", "Seed", values.get("seed", ""), 12)
        + _field("number", "Tune number", values.get("number", "1"), 8)
        + _field("temperature", "Temperature", values.get("temperature", "1"), 6)
        + f'<label class="check"><input type="checkbox" name="well_formed" value="on"{checked}>well-formed</label>'
        + _field("form", "Form (well-formed)", values.get("form", ""), 8, "e.g. AABB")
        + _field("bars_per_part", "Bars per part", values.get("bars_per_part", "8"), 6, "8 or 8,16")
        + f'<label class="wide">Start the tune with (ABC or tokens)<input name="prime" '
          f'value="{escape(values.get("prime", ""))}" placeholder="e.g. |:GABc dedB|"></label>'
        + "<button>Compose</button></form>"
    )


def compose(values: Mapping[str, str], well_formed: bool, model: str, result: str = "", error: str | None = None,
            notes: Sequence[str] = (), command: str = "", datasets: Sequence[str] = ()) -> str:
    said = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    reproduce = (f"<h2>The same tune from the command line</h2>\n<code class=\"command\">{escape(command)}</code>"
                 if command else "")
    body = (f"<h1>Compose</h1>\n<p class=meta>Model: {escape(model)}</p>\n{compose_form(values, well_formed)}\n"
            f"{error_block(error) if error else ''}{said}\n{result}\n{reproduce}")
    return page("Compose", body, datasets, True)
