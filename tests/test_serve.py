"""``folkrnn serve``: the real server on 127.0.0.1 (a free port), asked over HTTP like a browser asks.

The datasets are made here: twenty tunes of tests/test_books.py (two of them not well-formed),
compiled into a corpus of two volumes with their PDFs, the generated dataset they came from, an
ingest-like dataset keyed by id, and a dataset whose title tries to inject markup. The compose page
samples from a small model saved as a checkpoint; its tune is compared with what
``folkrnn generate --numbers`` prints.
"""

from __future__ import annotations

import html
import http.client
import os
import re
import shlex
import signal
import threading

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.conftest import small_model, start_folkrnn
from tests.test_books import generated_table, run_compile, tune_tokens, write_dataset

SNEAKY_TITLE = "x --> <script>alert(1)</script> </svg><img src=x onerror=alert(2)>"


# --- the datasets and the server ------------------------------------------------------------------
def ingest_dataset(path: str) -> str:
    """Five tunes as ``folkrnn ingest`` writes them (TUNES: ids, collections, no numbers)."""
    from folkrnn.schemas.tables import TUNES
    from folkrnn.schemas.vocab import encode
    from folkrnn.transforms.validator import validate_tokens

    rows = []
    for position in range(5):
        tokens, _ = tune_tokens(position + 1)
        findings = validate_tokens(tokens)
        rows.append({"id": f"oneills/tunes.abc#{position}", "source": "tunes.abc", "collection": "oneills",
                     "position": position, "title": f"Ingested Tune {position}", "original_meter": tokens[0][2:],
                     "original_key": "D", "meter_mapped": False, "transpose": -2, "meter": tokens[0][2:],
                     "mode": tokens[1][3:], "tokens": tokens, "token_ids": encode(tokens), "length": len(tokens),
                     "content_hash": str(position), "split": "train", "encoding": "utf-8", "removed": [],
                     **{name: getattr(findings, name) for name in ("valid", "reasons", "problems", "bar_count",
                                                                   "bar_lengths_failed", "sections", "form",
                                                                   "standard_form", "ends_on_tonic", "pickup")}})
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TUNES), os.path.join(path, "part-00000.parquet"))
    return path


def sneaky_dataset(path: str) -> str:
    """One tune whose title tries to close the SVG's comment and element and run a script."""
    table = generated_table([1])
    table = table.set_column(table.schema.get_field_index("title"), "title", pa.array([SNEAKY_TITLE]))
    os.makedirs(path, exist_ok=True)
    pq.write_table(table, os.path.join(path, "part-00000.parquet"))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("serve")
    generated = write_dataset(str(base / "run" / "generated"), range(1, 21))
    assert run_compile(generated, "--out", str(base / "books"), "--per-volume", "10", "--quiet") == 0
    import torch

    from folkrnn.model.checkpoint import save_checkpoint

    checkpoint = str(base / "small.pt")
    save_checkpoint(checkpoint, small_model(seed=3, end_bias=2.0))
    torch.set_num_threads(1)
    return {"corpus": str(base / "books" / "corpus"), "generated": generated, "checkpoint": checkpoint,
            "ingest": ingest_dataset(str(base / "ingest" / "tunes")), "sneaky": sneaky_dataset(str(base / "sneaky")),
            "books": str(base / "books")}


@pytest.fixture(scope="module")
def server(data):
    """The app on a free port of 127.0.0.1, serving in a thread: (host, port, app)."""
    from folkrnn.pipeline.serve import build_app
    from folkrnn.pipeline.serve.server import make_server

    app = build_app([data["corpus"], data["generated"], data["ingest"], data["sneaky"]], data["checkpoint"])
    httpd = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[0], httpd.server_address[1], app
    httpd.shutdown()
    httpd.server_close()
    app.media.close()


def get(server, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    """(status, headers, body bytes) of one request to the test server."""
    host, port, _ = server
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def page(server, path: str, expected: int = 200) -> str:
    status, _, body = get(server, path)
    text = body.decode("utf-8")
    assert status == expected, (status, text[-600:])
    assert "Traceback" not in text
    return text


def error_of(text: str) -> str:
    found = re.search(r'class="error">([^<]*)<', text)
    return html.unescape(found.group(1)) if found else ""


def listed_numbers(text: str) -> list[int]:
    """The tune numbers of a browse page's table."""
    return [int(n) for n in re.findall(r'<td><a href="/tune\?d=[^&]+&amp;n=\d+">(\d+)</a></td>', text)]


def abc_of(text: str) -> str:
    return html.unescape(re.search(r'<pre class="abc">(.*?)</pre>', text, re.S).group(1))


def corpus_table(path: str) -> pa.Table:
    return ds.dataset(path, partitioning="hive").to_table()


# --- pages ----------------------------------------------------------------------------------------
def test_home_lists_every_dataset_and_the_compose_page(server):
    text = page(server, "/")
    for name in ("books-corpus", "run-generated", "ingest-tunes", "sneaky"):
        assert f'href="/browse?d={name}"' in text
    assert "20 tunes" in text and 'href="/compose"' in text
    status, headers, _ = get(server, "/style.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers[
        "Content-Security-Policy"]


def test_search_filters_are_the_datasets_own_values(server, data):
    table = corpus_table(data["corpus"]).to_pylist()
    text = page(server, "/browse?d=books-corpus&meter=6/8")
    assert listed_numbers(text) == [r["number"] for r in table if r["meter"] == "6/8"]
    text = page(server, "/browse?d=books-corpus&valid=no")
    assert listed_numbers(text) == [3, 11]  # tests/test_books.py breaks 3 and 11 mod 20
    assert "Tunes 1-2 of 2" in text
    mode, form = table[0]["mode"], table[0]["form"]
    text = page(server, f"/browse?d=books-corpus&mode={mode}&form={form}&volume=1&valid=yes")
    assert listed_numbers(text) == [r["number"] for r in table if r["mode"] == mode and r["form"] == form
                                    and r["volume"] == 1 and r["valid"]]
    words = table[4]["title"].lower().split()[-2:]  # e.g. "piper jig", any case, any order
    text = page(server, f"/browse?d=books-corpus&title={'+'.join(reversed(words)).upper()}")
    assert listed_numbers(text) == [r["number"] for r in table if all(w in r["title"].lower() for w in words)]
    assert listed_numbers(page(server, "/browse?d=books-corpus&number=5-7")) == [5, 6, 7]
    assert listed_numbers(page(server, "/browse?d=books-corpus&number=12")) == [12]
    assert "No tune matches." in page(server, "/browse?d=books-corpus&title=nosuchword")


def test_search_pages(server, monkeypatch):
    from folkrnn.pipeline.serve import library

    monkeypatch.setattr(library, "PAGE_SIZE", 8)
    first, third = page(server, "/browse?d=books-corpus"), page(server, "/browse?d=books-corpus&page=3")
    assert listed_numbers(first) == list(range(1, 9)) and listed_numbers(third) == list(range(17, 21))
    assert "page 1 of 3" in first and 'page=2">next</a>' in first
    assert "page 4 does not exist" in error_of(page(server, "/browse?d=books-corpus&page=4", 400))


@pytest.mark.parametrize("query, message", [
    ("meter=4/4' OR 1=1 --", "unknown meter \"4/4' OR 1=1 --\""),
    ("meter=4/4%27%20OR%201%3D1%20--", "unknown meter \"4/4' OR 1=1 --\""),
    ("mode=maj') OR TRUE; SELECT 1 --", "unknown mode"),
    ("volume=1 OR 1=1", "unknown volume '1 OR 1=1'"),
    ("valid=true OR 1=1", "valid takes yes or no"),
    ("number=1 OR 1=1", "number takes a tune number or a range"),
    ("number=5-2", "runs backwards"),
    ("page=1;DROP", "page takes a page number"),
])
def test_malicious_filters_are_refused_with_a_message(server, query, message):
    text = page(server, f"/browse?d=books-corpus&{query.replace(' ', '%20')}", 400)
    assert message in error_of(text)
    assert listed_numbers(text) == [] and '<form class="filters"' in text  # the form stays to fix it


@pytest.mark.parametrize("title", ["x'); SELECT read_text('/etc/passwd')", "x' OR '1'='1", "%' OR title LIKE '%",
                                   "read_text('/etc/passwd')", ".*"])
def test_title_words_are_plain_text_never_sql_or_patterns(server, title):
    from urllib.parse import quote

    text = page(server, f"/browse?d=books-corpus&title={quote(title)}")
    assert "No tune matches." in text and "root:" not in text


def test_unknown_datasets_tunes_and_pages_are_404_pages(server):
    assert "no dataset named '../../etc'" in error_of(page(server, "/browse?d=../../etc", 404))
    assert "no tune numbered 999 in books-corpus" in error_of(page(server, "/tune?d=books-corpus&n=999", 404))
    assert "a tune number is a whole number" in error_of(page(server, "/tune?d=books-corpus&n=1%20OR%201=1", 400))
    assert "unknown key" in error_of(page(server, "/tune?d=books-corpus&n=1&key=H%23", 400))
    assert "no page at /etc/passwd" in error_of(page(server, "/etc/passwd", 404))
    assert "has no PDF of volume 9" in error_of(page(server, "/volume.pdf?d=books-corpus&v=9", 404))
    status, _, _ = get(server, "/", method="POST")
    assert status == 501


def test_a_bug_is_a_one_line_500_page_not_a_traceback(server, monkeypatch, capfd):
    from folkrnn.pipeline.serve.library import Dataset

    def broken(self, key):
        raise RuntimeError("the row reader broke\nsecond line")

    monkeypatch.setattr(Dataset, "row", broken)
    text = page(server, "/tune?d=run-generated&n=2", 500)
    assert "unexpected RuntimeError: the row reader broke second line" in error_of(text)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "folkrnn serve: error: unexpected RuntimeError on /tune" in err


def test_a_request_for_another_host_name_is_refused(server):
    status, _, body = get(server, "/", headers={"Host": "attacker.example:8000"})
    assert status == 403 and b"only requests for localhost" in body
    assert get(server, "/", headers={"Host": "localhost:8000"})[0] == 200


# --- a tune ---------------------------------------------------------------------------------------
def test_tune_page_is_the_book_tune_with_notation_findings_audio_and_downloads(server, data):
    row = next(r for r in corpus_table(data["corpus"]).to_pylist() if r["number"] == 12)
    text = page(server, "/tune?d=books-corpus&n=12")
    assert abc_of(text) == row["abc"]  # the block the book prints, in its session key
    assert f"{row['number']}. {row['title']}" in html.unescape(text)
    assert f"key {row['key']}" in text and f"volume {row['volume']}" in text and f"book page {row['page']}" in text
    svg = re.search(r'<svg[^>]*class="notation".*?</svg>', text, re.S).group(0)
    assert svg.count("<path") + svg.count("<use") > 50 and "<!--" not in svg
    assert '<span class="valid">valid</span>' in text and "AABB" in text

    audio = html.unescape(re.search(r'<audio controls preload="none" src="([^"]+)"', text).group(1))
    status, headers, ogg = get(server, audio)
    assert status == 200 and headers["Content-Type"] == "audio/ogg" and ogg[:4] == b"OggS" and len(ogg) > 10_000
    status, headers, part = get(server, audio, {"Range": "bytes=0-3"})
    assert status == 206 and part == b"OggS" and headers["Content-Range"] == f"bytes 0-3/{len(ogg)}"
    links = {html.unescape(href) for href in re.findall(r'<a href="([^"]+)"', text)}
    midi = next(link for link in links if link.startswith("/tune.mid"))
    status, headers, body = get(server, midi)
    assert status == 200 and body[:4] == b"MThd" and "attachment" in headers["Content-Disposition"]
    abc = next(link for link in links if link.startswith("/tune.abc"))
    assert get(server, abc)[2].decode() == "%abc-2.1\n\n" + row["abc"]
    pdf = next(link for link in links if link.startswith("/volume.pdf"))
    assert pdf.endswith(f"#page={row['page']}")
    status, headers, body = get(server, pdf.split("#")[0])
    assert status == 200 and body[:5] == b"%PDF-" and headers["Content-Type"] == "application/pdf"
    assert "/tune?d=books-corpus&n=11" in links and "/tune?d=books-corpus&n=13" in links  # previous, next


def test_a_tune_the_validator_fails_shows_what_is_wrong(server):
    text = page(server, "/tune?d=run-generated&n=3")
    assert "not well-formed" in text and "bar too short" in text
    assert "* Not well-formed: bar too short" in abc_of(text)  # the book's mark, above the music


@pytest.mark.parametrize("key", ["G", "C", "Bb"])
def test_transposition_is_compiles(server, data, tmp_path, key):
    """The page's ABC in a key is the block ``folkrnn compile --key KEY`` prints."""
    assert run_compile(data["generated"], "--out", str(tmp_path), "--key", key, "--no-pdf", "--quiet") == 0
    books = {r["number"]: r["abc"] for r in corpus_table(str(tmp_path / "corpus")).to_pylist()}
    for number in (1, 2, 4):
        text = page(server, f"/tune?d=books-corpus&n={number}&key={key}")
        assert abc_of(text) == books[number]
        assert f'<option value="{key}" selected>' in text


def test_generated_and_ingest_datasets_are_served_too(server, data):
    text = page(server, "/tune?d=run-generated&n=5&key=session")
    assert "<svg" in text and "seed 1005" in text
    listing = page(server, "/browse?d=ingest-tunes&collection=oneills")
    assert "Ingested Tune 4" in listing and "Tunes 1-5 of 5" in listing
    text = page(server, "/tune?d=ingest-tunes&id=oneills/tunes.abc%232")
    assert "Ingested Tune 2" in text and "original key D" in text and "<svg" in text
    assert "no tune oneills/tunes.abc#9" in error_of(page(server, "/tune?d=ingest-tunes&id=oneills/tunes.abc%239",
                                                           404))


def test_markup_in_a_title_never_reaches_the_page_as_markup(server):
    text = page(server, "/tune?d=sneaky&n=1")
    assert "<script" not in text and "onerror" not in text.replace("onerror=alert(2)&gt;", "")
    assert "<img" not in text and text.count("</svg>") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown as text


def test_clean_svg_keeps_the_drawing_only():
    from folkrnn.pipeline.serve.media import clean_svg

    dirty = ('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
             'xmlns:xlink="http://www.w3.org/1999/xlink" width="100px" height="50px" onload="alert(1)">\n'
             "<!-- title: a --> <script>alert(2)</script> -->\n"
             '<script>alert(3)</script><foreignObject><div>x</div></foreignObject>\n'
             '<defs><path id="n" d="M0 0"/></defs><use xlink:href="#n" x="1"/>'
             '<use xlink:href="http://example.com/x.svg#n"/><text style="fill:url(http://x/)">T</text>'
             '<a href="javascript:alert(4)"><path d="M1 1"/></a></svg>')
    clean = clean_svg(dirty)
    assert "alert" not in clean and "script" not in clean and "foreignObject" not in clean
    assert "http://example.com" not in clean and "url(" not in clean and "<a" not in clean
    assert 'xlink:href="#n"' in clean and 'viewBox="0 0 100 50"' in clean and clean.startswith("<svg")


# --- compose --------------------------------------------------------------------------------------
COMPOSE = "/compose?compose=1&number=5&seed=7&temperature=0.9&meter=6/8&mode=dor&well_formed=on&form=AABB" \
          "&bars_per_part=4&prime=%7C%3AGABc"


def test_compose_gives_the_tune_folkrnn_generate_prints(server, data, folkrnn_main):
    text = page(server, COMPOSE)
    assert "<svg" in text and '<span class="valid">valid</span>' in text and "<audio" in text
    flags = ["--numbers", "5", "--seed", "7", "--temperature", "0.9", "--meter", "6/8", "--mode", "dor",
             "--prime", "|:GABc", "--well-formed", "--form", "AABB", "--bars-per-part", "4"]
    command = shlex.split(html.unescape(re.search(r'<code class="command">([^<]*)</code>', text).group(1)))
    assert command == ["folkrnn", "generate", data["checkpoint"], *flags]  # outside the repository: as given
    cli = folkrnn_main("generate", data["checkpoint"], *flags)
    assert cli.returncode == 0, cli.stderr
    links = {html.unescape(href) for href in re.findall(r'<a href="([^"]+)"', text)}
    generated = next(link for link in links if link.startswith("/generated.abc"))
    assert get(server, generated)[2].decode() + "\n" == cli.stdout
    # shown as generated (in C) by default: the ABC is the book's block of the same tokens
    assert "K:Cdor" in abc_of(text) and "X:5" in abc_of(text)
    moved = page(server, COMPOSE + "&key=session")
    assert "K:Edor" in abc_of(moved) or "K:Ador" in abc_of(moved)
    audio = html.unescape(re.search(r'<audio controls preload="none" src="([^"]+)"', moved).group(1))
    assert audio.startswith("/compose.ogg?") and get(server, audio)[2][:4] == b"OggS"


def test_compose_form_first_visit_has_a_seed_and_well_formed_ticked(server):
    text = page(server, "/compose")
    assert re.search(r'name="seed" value="\d+"', text) and 'name="well_formed" value="on" checked' in text
    assert "<svg" not in text
    unticked = page(server, "/compose?compose=1&seed=3&number=2")  # the box left empty: as the model writes
    assert 'name="well_formed" value="on">' in unticked and "--well-formed" not in html.unescape(unticked)


@pytest.mark.parametrize("query, message", [
    ("meter=5/4", "unknown meter '5/4'; the model's meters are 2/4, 3/4, 4/4, 6/8, 9/8, 12/8, 3/2"),
    ("mode=lydian", "unknown mode 'lydian'"),
    ("prime=M%3A5%2F4%20K%3ACmaj%20G", "cannot read prime as tokens or ABC"),
    ("prime=%5E%5E%5Ec2%20%7C", "cannot read prime as tokens or ABC: an accidental without a note"),
    ("meter=6/8&prime=%7CGABc%7Cdefg%7C", "prime bar 1 (d e f g) is 4 eighths long, but a bar of M:6/8 is 6"),
    ("prime=" + "C%20" * 999, "the prime is 1001 tokens long; a tune is cut at 1000 tokens"),
    ("temperature=hot", "temperature must be a number"),
    ("temperature=nan", "temperature must be between 0.01 and 10"),
    ("temperature=0", "temperature must be between 0.01 and 10"),
    ("seed=-1", "seed must be from 0"),
    ("number=0", "tune number must be from 1"),
    ("well_formed=on&form=A1", "form"),
    ("well_formed=on&form=AABB&bars_per_part=eight", "bars per part takes numbers like 8 or 8,16"),
])
def test_compose_mistakes_are_shown_on_the_page(server, query, message):
    text = page(server, f"/compose?compose=1&seed=1&{query}", 400)
    assert message in error_of(text)
    assert '<form class="compose"' in text and "<svg" not in text and "--" not in error_of(text)


def test_a_prime_whose_bars_imply_a_meter_says_so(server):
    text = page(server, "/compose?compose=1&seed=1&prime=%7CGABc%7Cdefg%7C")
    assert "its bars fit M:2/4 only" in html.unescape(text) and "K:C" in abc_of(text) and "M:2/4" in abc_of(text)


# --- the command ----------------------------------------------------------------------------------
def test_serve_mistakes_are_one_line(folkrnn_main, tmp_path, data):
    for argv, message in [((str(tmp_path / "missing"),), "no dataset at"),
                          (("--port", "70000", "--checkpoint", "none"), "--port must be from 0 to 65535"),
                          (("--checkpoint", str(tmp_path / "no.pt")), "no checkpoint at"),
                          ((data["books"] + "/volumes",), "no Parquet files")]:
        result = folkrnn_main("serve", *argv)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("folkrnn serve: error: ") and message in result.stderr


def test_the_command_serves_until_interrupted(data):
    process = start_folkrnn("serve", data["corpus"], "--checkpoint", "none", "--port", "0")
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert "books-corpus (20 tunes)" in lines[0], lines
        port = int(re.search(r"open http://127\.0\.0\.1:(\d+)/", lines[1]).group(1))
        text = page(("127.0.0.1", port, None), "/tune?d=books-corpus&n=1")
        assert "<svg" in text
        assert "composing is off" in error_of(page(("127.0.0.1", port, None), "/compose", 404))
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped" in out and err == ""


def test_demo_ends_with_the_serve_command(tmp_path, capsys):
    import json

    from folkrnn.pipeline import demo

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"valid_fraction": 1.0, "tunes": 5}))
    paths = {name: str(tmp_path / name) for name in ("ingest", "generated", "compiled")}
    demo.print_closing(paths, str(summary), [("generate", 1.0)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"folkrnn serve {paths['compiled']}/corpus {paths['generated']}" in last
