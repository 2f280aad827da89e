"""Scraping against a real HTTP server on 127.0.0.1 (a port the OS picks), never the outside world."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from folkrnn.pipeline.beam.scrape import ScrapeAbc, _FetchHostDoFn
from folkrnn.transforms.scrape import DEFAULT_USER_AGENT, extract_abc, fetch, host_of, read_url_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNE = "X:1\nT:The Kesh\nM:6/8\nL:1/8\nK:G\n|:GAG GAB|ABA ABd|edd gdd|edB dBA:|\n"
A_TUNE = "X:2\nT:A Tune\nM:4/4\nK:D\nd2fd A2FA|\n"
B_TUNE = "X:3\nT:B Tune\nM:3/4\nK:Ador\nA2 B2 c2|\n"
LATIN1_TUNE = "X:4\nT:Caf\u00e9 \u00e0 la ma\u00efs\nM:2/4\nK:C\nCDEF|\n"
PRE_PAGE = """<!DOCTYPE html>
<html><head><title>X: not a tune</title><style>K: neither</style></head>
<body><h1>Tom &amp; Jerry</h1>
<pre>
not abc, just code
</pre>
<p>Here it is:</p>
<pre>
X:5
T:Tom &amp; Jerry
M:4/4
K:D
<b>A&gt;B</b> c&lt;d|
</pre>
</body></html>
"""
PRE_TUNE = "X:5\nT:Tom & Jerry\nM:4/4\nK:D\nA>B c<d|\n"
NO_ABC_PAGE = "<html><body><h1>About</h1><p>We play tunes on Tuesdays. Key: G.</p></body></html>"
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


class TuneServer(ThreadingHTTPServer):
    """Serves the fixture site and records every request it gets."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, float]] = []  # (path with query, User-Agent, time)
        self.release = threading.Event()  # lets /slow.abc finish at teardown

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for p, _, _ in self.requests if path is None or p == path)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()


class Handler(BaseHTTPRequestHandler):
    server: TuneServer

    def log_message(self, format: str, *args: object) -> None:  # keeps test output clean
        pass

    def do_GET(self) -> None:  # the name http.server dispatches to
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("User-Agent", ""), time.monotonic()))
            seen = sum(1 for p, _, _ in self.server.requests if p == self.path)
        path = urlsplit(self.path).path  # a proxy request names the whole URL: its path is the page
        try:
            self.route(path, seen)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test); nothing to answer

    def route(self, path: str, seen: int) -> None:
        base = self.server.base
        index = (
            '<html><body><ul><li><a href="files/a.abc">A</a></li>'
            f'<li><a href="{base}/files/b.abc">B</a></li>'
            '<li><a href="files/a.abc#top">A again</a></li>'
            '<li><a href="missing.abc">gone</a></li><li><a href="about.html">about</a></li></ul></body></html>'
        )
        index2 = f'<html><body><a href="/files/a.abc">A</a> <a href="{base}/files/b.abc">B</a></body></html>'
        pages: dict[str, tuple[str, bytes]] = {
            "/tune.abc": ("text/vnd.abc", TUNE.encode()),
            "/files/a.abc": ("application/octet-stream", A_TUNE.encode()),  # typed only by its name
            "/files/b.abc": ("text/plain; charset=utf-8", B_TUNE.encode()),
            "/pre.html": ("text/html; charset=utf-8", PRE_PAGE.encode()),
            "/index.html": ("text/html", index.encode()),
            "/index2.html": ("text/html", index2.encode()),
            "/noabc.html": ("text/html", NO_ABC_PAGE.encode()),
            "/latin1.abc": ("text/plain", LATIN1_TUNE.encode("latin-1")),
            "/binary.abc": ("application/octet-stream", BINARY),
            "/my%20caf%C3%A9.abc": ("text/vnd.abc", TUNE.encode()),
        }
        if path in pages:
            self.reply(200, *pages[path])
        elif path == "/flaky.abc":  # 500 twice, then the tune
            if seen <= 2:
                self.reply(500, "text/plain", b"oops")
            else:
                self.reply(200, "text/vnd.abc", TUNE.encode())
        elif path == "/down.abc":
            self.reply(500, "text/plain", b"down")
        elif path == "/busy.abc":  # 503 asking for a 7 s pause once, then the tune
            if seen == 1:
                self.reply(503, "text/plain", b"busy", {"Retry-After": "7"})
            else:
                self.reply(200, "text/vnd.abc", TUNE.encode())
        elif path == "/slow.abc":
            self.server.release.wait(5)
            self.reply(200, "text/vnd.abc", TUNE.encode())
        else:
            self.reply(404, "text/plain", b"not found")

    def reply(self, status: int, content_type: str, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = TuneServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def quick(**kw) -> dict:
    """Test settings: retries as in production, backoff tiny so the suite stays fast."""
    return {"cache_dir": None, "timeout": 0.5, "retries": 3, "backoff": 0.001, **kw}


# ---------------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------------


def test_fetch_abc_file_with_project_user_agent(server):
    result = fetch(server.url("/tune.abc"), **quick())
    assert result.ok and result.status == 200 and result.attempts == 1 and not result.from_cache
    assert result.body == TUNE.encode()
    assert result.content_type == "text/vnd.abc"
    assert server.requests[0][:2] == ("/tune.abc", DEFAULT_USER_AGENT)


def test_fetch_custom_user_agent(server):
    fetch(server.url("/tune.abc"), **quick(user_agent="folkrnn-test/1"))
    assert server.requests[0][1] == "folkrnn-test/1"


def test_fetch_retries_500_with_backoff_then_succeeds(server):
    waits: list[float] = []
    result = fetch(server.url("/flaky.abc"), **quick(backoff=0.01), sleep=waits.append)
    assert result.ok and result.body == TUNE.encode()
    assert result.attempts == 3 and server.count("/flaky.abc") == 3
    assert waits == [0.01, 0.02]  # exponential


def test_fetch_gives_up_after_retries_on_persistent_500(server):
    result = fetch(server.url("/down.abc"), **quick(retries=2))
    assert result.error == "http_500" and result.status == 500 and result.body == b""
    assert result.attempts == 3 and server.count("/down.abc") == 3


def test_fetch_does_not_retry_404(server):
    result = fetch(server.url("/missing.abc"), **quick())
    assert result.error == "http_404" and result.attempts == 1
    assert server.count("/missing.abc") == 1


def test_fetch_timeout_is_retried(server):
    start = time.monotonic()
    result = fetch(server.url("/slow.abc"), **quick(timeout=0.3, retries=1))
    assert result.error == "timeout" and result.status is None
    assert result.attempts == 2 and server.count("/slow.abc") == 2
    assert time.monotonic() - start < 3


def test_fetch_honours_retry_after_up_to_a_cap(server):
    waits: list[float] = []
    result = fetch(server.url("/busy.abc?a"), **quick(), sleep=waits.append)
    assert result.ok and result.attempts == 2 and waits == [7.0]
    waits.clear()
    result = fetch(server.url("/busy.abc?b"), **quick(), sleep=waits.append, max_retry_after=2.0)
    assert result.ok and waits == [2.0]


def test_fetch_connection_refused_is_a_connection_error():
    with socket.socket() as s:  # a port that was just free on 127.0.0.1, so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    result = fetch(f"http://127.0.0.1:{port}/x.abc", **quick(retries=2), sleep=waits.append)
    assert result.error == "connection_error" and result.attempts == 3 and len(waits) == 2


def test_fetch_percent_encodes_spaces_and_non_ascii(server):
    result = fetch(server.url("/my caf\u00e9.abc"), **quick())
    assert result.ok and result.body == TUNE.encode()
    assert fetch(server.url("/my%20caf%C3%A9.abc"), **quick()).ok  # already encoded: left alone


def test_fetch_rejects_non_http_urls_without_a_request(server):
    for bad in ("ftp://127.0.0.1/tune.abc", "tune.abc", "http://"):
        assert fetch(bad, **quick()).error == "bad_url"
    assert server.count() == 0


def test_cache_serves_a_second_fetch_without_a_request(server, tmp_path):
    cache = str(tmp_path / "cache")
    first = fetch(server.url("/pre.html"), **quick(cache_dir=cache))
    second = fetch(server.url("/pre.html"), **quick(cache_dir=cache))
    assert server.count() == 1
    assert second.from_cache and second.attempts == 0
    assert (second.body, second.status, second.content_type) == (first.body, 200, "text/html; charset=utf-8")
    assert sorted(name.rsplit(".", 1)[1] for name in os.listdir(cache)) == ["body", "json"]  # no temp files left
    third = fetch(server.url("/pre.html"), **quick(cache_dir=cache), refresh=True)
    assert not third.from_cache and server.count() == 2


def test_cache_keeps_only_successes(server, tmp_path):
    cache = str(tmp_path / "cache")
    for _ in range(2):
        assert fetch(server.url("/missing.abc"), **quick(cache_dir=cache)).error == "http_404"
    assert server.count("/missing.abc") == 2
    assert not os.path.exists(cache) or os.listdir(cache) == []


def test_cache_entry_with_wrong_length_is_refetched(server, tmp_path):
    cache = str(tmp_path / "cache")
    fetch(server.url("/tune.abc"), **quick(cache_dir=cache))
    [body_file] = [n for n in os.listdir(cache) if n.endswith(".body")]
    with open(os.path.join(cache, body_file), "ab") as f:  # as if a crash cut a refresh short
        f.write(b"extra")
    again = fetch(server.url("/tune.abc"), **quick(cache_dir=cache))
    assert not again.from_cache and again.body == TUNE.encode() and server.count() == 2


def test_fetch_goes_through_the_proxy_the_environment_names(server, monkeypatch):
    monkeypatch.setenv("http_proxy", server.base)  # the fixture server stands in for the proxy
    monkeypatch.delenv("no_proxy", raising=False)
    result = fetch("http://tunes.test/tune.abc", **quick())
    assert result.ok and result.body == TUNE.encode()
    assert server.requests[0][0] == "http://tunes.test/tune.abc"  # the whole URL: a proxy request


def test_fetch_skips_the_proxy_for_no_proxy_hosts(server, monkeypatch):
    with socket.socket() as s:  # a proxy that is not there: using it would fail
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert fetch(server.url("/tune.abc"), **quick()).ok


def test_scraping_functions_do_not_import_beam():
    modules = "folkrnn.transforms.scrape, folkrnn.transforms.scrape.client, folkrnn.transforms.scrape.extract, folkrnn.transforms.scrape.cache"
    code = f"import sys, {modules}; assert 'apache_beam' not in sys.modules, 'apache_beam was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# extract_abc, host_of, read_url_list
# ---------------------------------------------------------------------------------------------


def test_extract_pre_block_unescaped_and_stripped(server):
    result = fetch(server.url("/pre.html"), **quick())
    texts, links = extract_abc(result.url, result.body, result.content_type)
    assert texts == [PRE_TUNE] and links == []


def test_extract_index_links_absolute_deduplicated_in_order(server):
    result = fetch(server.url("/index.html"), **quick())
    texts, links = extract_abc(result.url, result.body, result.content_type)
    assert texts == []
    assert links == [server.url("/files/a.abc"), server.url("/files/b.abc"), server.url("/missing.abc")]


def test_extract_abc_files_by_type_name_and_encoding(server):
    for path, expected in (("/tune.abc", TUNE), ("/files/a.abc", A_TUNE), ("/latin1.abc", LATIN1_TUNE)):
        result = fetch(server.url(path), **quick())
        assert extract_abc(result.url, result.body, result.content_type) == ([expected], [])


def test_extract_nothing_from_pages_without_abc_or_binary(server):
    for path in ("/noabc.html", "/binary.abc"):
        result = fetch(server.url(path), **quick())
        assert extract_abc(result.url, result.body, result.content_type) == ([], [])


def test_extract_page_text_when_no_pre_holds_abc():
    page = b"<html><body><div>\n   X:1<br>T:Plain<br/>K:G<br>GABc|</div><p>Thanks</p></body></html>"
    texts, _ = extract_abc("http://example.test/t.html", page, "text/html")
    assert texts == ["X:1\nT:Plain\nK:G\nGABc|\n\nThanks\n"]


def test_extract_sniffs_untyped_bodies_and_honours_base_href():
    assert extract_abc("http://h.test/get?id=1", TUNE.encode(), "") == ([TUNE], [])
    assert extract_abc("http://h.test/get?id=2", b"just words", None) == ([], [])
    page = b'<head><base href="http://mirror.test/abc/"></head><a href="x.ABC?v=1">x</a><a href="/y.txt">y</a>'
    assert extract_abc("http://h.test/p", page, None) == ([], ["http://mirror.test/abc/x.ABC?v=1"])


def test_host_of():
    assert host_of("https://TheSession.org/tunes/1") == "thesession.org"
    assert host_of("http://127.0.0.1:8080/x.abc") == "127.0.0.1:8080"
    assert host_of("http://example.org:80/x") == "example.org"


def test_read_url_list(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text(
        "\ufeff# tunes to fetch\n\nhttp://a.test/1.abc\n  https://b.test/p.html?x=1#frag  # a page\n#http://c.test/off\n"
    )
    assert read_url_list(str(path)) == ["http://a.test/1.abc", "https://b.test/p.html?x=1#frag"]


def test_fetch_dofn_pickles():
    fn = _FetchHostDoFn({"cache_dir": None, "timeout": 1, "retries": 0, "backoff": 0, "refresh": False,
                         "user_agent": DEFAULT_USER_AGENT}, delay=1.0, follow_links=True)
    assert isinstance(pickle.loads(pickle.dumps(fn)), _FetchHostDoFn)


# ---------------------------------------------------------------------------------------------
# ScrapeAbc end to end
# ---------------------------------------------------------------------------------------------


def run_scrape(urls: list[str], docs: list[dict], rejects: list[tuple[str, str]], **kw) -> dict[str, int]:
    """Runs ScrapeAbc on the DirectRunner, asserts its documents and (source, reason) of its
    rejects, and returns the ``scrape`` counters."""
    p = TestPipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    scraped = p | beam.Create(urls) | ScrapeAbc(**kw)
    assert_that(scraped.documents, equal_to(docs), label="Documents")
    reasons = scraped.rejects | beam.Map(lambda r: (r["source"], r["reason"]))
    assert_that(reasons, equal_to(rejects), label="Rejects")
    result = p.run()
    result.wait_until_finish()
    return scrape_counters(result)


def scrape_counters(result) -> dict[str, int]:
    """The ``scrape`` counters summed over steps (both fetch rounds count under the same names)."""
    totals: Counter = Counter()
    for c in result.metrics().query(MetricsFilter().with_namespace("scrape"))["counters"]:
        totals[c.key.metric.name] += c.result
    return dict(totals)


def test_scrape_abc_end_to_end(server, tmp_path):
    u = server.url
    host = host_of(u("/"))
    urls = [
        u("/tune.abc"), u("/tune.abc"), " " + u("/pre.html"), u("/index.html"), u("/files/b.abc"),
        u("/noabc.html"), u("/flaky.abc"), u("/down.abc"), u("/slow.abc"), u("/latin1.abc"),
        u("/binary.abc"), "",
    ]
    p = TestPipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    scraped = p | beam.Create(urls) | ScrapeAbc(
        cache_dir=str(tmp_path / "cache"), timeout=0.5, retries=2, backoff=0.001, delay=0,
    )
    def doc(path, text, encoding="utf-8"):
        return {"source": u(path), "collection": host, "text": text, "encoding": encoding, "final_url": u(path)}

    assert_that(scraped.documents, equal_to([
        doc("/tune.abc", TUNE), doc("/pre.html", PRE_TUNE), doc("/files/a.abc", A_TUNE),
        doc("/files/b.abc", B_TUNE), doc("/flaky.abc", TUNE), doc("/latin1.abc", LATIN1_TUNE, "latin-1"),
    ]), label="Documents")
    assert_that(scraped.rejects | beam.Map(lambda r: (r["source"], r["reason"], r["stage"], r["collection"])),
                equal_to([
                    (u("/missing.abc"), "http_404", "fetch", host),
                    (u("/noabc.html"), "not_abc", "fetch", host),
                    (u("/down.abc"), "http_500", "fetch", host),
                    (u("/slow.abc"), "timeout", "fetch", host),
                    (u("/binary.abc"), "binary", "fetch", host),
                ]), label="Rejects")
    assert_that(scraped.rejects | "Details" >> beam.Map(lambda r: (r["reason"], r["detail"])),
                equal_to([
                    ("http_404", f"GET {u('/missing.abc')} (linked from {u('/index.html')}) returned "
                                 "HTTP 404 Not Found after 1 attempt: the file is gone; fix or remove the URL"),
                    ("not_abc", f"GET {u('/noabc.html')} returned HTTP 200 but no ABC (no X:/K: lines) in "
                                "text/html content; not a tune source"),
                    ("http_500", f"GET {u('/down.abc')} returned HTTP 500 Internal Server Error on all 3 attempts: "
                                 "the server is failing or busy; re-run later (successful fetches are cached)"),
                    ("timeout", f"GET {u('/slow.abc')}: no complete response within 0.5 s (--timeout) after "
                                "3 attempts; nothing kept: the server is slow or down: try later or raise --timeout"),
                    ("binary", f"GET {u('/binary.abc')} returned HTTP 200 but binary data; not a tune source"),
                ]), label="Details")
    result = p.run()
    result.wait_until_finish()

    counters = scrape_counters(result)
    distinct_inputs = 10  # 12 given: one duplicate, one blank
    new_links = 2  # a.abc and missing.abc; b.abc was an input already
    outcomes = counters["document"] + counters["index_page"] + sum(
        counters.get(r, 0) for r in ("http_404", "http_500", "timeout", "not_abc", "binary"))
    assert outcomes == distinct_inputs + new_links == 6 + 1 + 5
    assert counters["link_found"] == 3
    # Each URL fetched once except the retried ones: flaky 3, down 3, slow 3.
    assert server.count("/files/b.abc") == 1 and server.count("/tune.abc") == 1
    assert server.count("/flaky.abc") == 3 and server.count("/down.abc") == 3 and server.count("/slow.abc") == 3
    assert counters["requests"] == server.count() == 12 + 6
    assert {ua for _, ua, _ in server.requests} == {DEFAULT_USER_AGENT}


def test_scrape_rerun_with_cache_makes_no_requests(server, tmp_path):
    u = server.url
    host = host_of(u("/"))
    urls = [u(p) for p in ("/tune.abc", "/pre.html", "/index2.html", "/latin1.abc", "/noabc.html", "/binary.abc")]
    docs = [
        {"source": u(path), "collection": host, "text": text, "encoding": enc, "final_url": u(path)}
        for path, text, enc in (("/tune.abc", TUNE, "utf-8"), ("/pre.html", PRE_TUNE, "utf-8"),
                                ("/files/a.abc", A_TUNE, "utf-8"), ("/files/b.abc", B_TUNE, "utf-8"),
                                ("/latin1.abc", LATIN1_TUNE, "latin-1"))
    ]
    rejects = [(u("/noabc.html"), "not_abc"), (u("/binary.abc"), "binary")]
    settings = {"cache_dir": str(tmp_path / "cache"), "timeout": 0.5, "backoff": 0.001, "delay": 0}

    first = run_scrape(urls, docs, rejects, **settings)
    assert server.count() == 8 and first["fetched_from_network"] == 8  # 6 URLs and 2 links
    server.reset()
    second = run_scrape(urls, docs, rejects, **settings)  # same outputs...
    assert server.count() == 0  # ...and not one request
    assert second["cache_hit"] == 8 and "fetched_from_network" not in second


def test_scrape_is_polite_sequential_sorted_and_delayed(server):
    u = server.url
    host = host_of(u("/"))
    paths = ["/tune.abc", "/latin1.abc", "/files/b.abc"]
    docs = [{"source": u("/tune.abc"), "collection": host, "text": TUNE, "encoding": "utf-8", "final_url": u("/tune.abc")},
            {"source": u("/latin1.abc"), "collection": host, "text": LATIN1_TUNE, "encoding": "latin-1", "final_url": u("/latin1.abc")},
            {"source": u("/files/b.abc"), "collection": host, "text": B_TUNE, "encoding": "utf-8", "final_url": u("/files/b.abc")}]
    run_scrape([u(p) for p in paths], docs, [], timeout=2, delay=0.2, follow_links=False)
    requested = [(path, t) for path, _, t in server.requests]
    assert [path for path, _ in requested] == sorted(paths)  # one host, one shard: in sorted order
    gaps = [b - a for (_, a), (_, b) in zip(requested, requested[1:])]
    assert all(gap >= 0.19 for gap in gaps), gaps


def test_scrape_shards_a_host_and_can_skip_links(server):
    u = server.url
    host = host_of(u("/"))
    urls = [u(p) for p in ("/tune.abc", "/latin1.abc", "/index.html", "/files/b.abc")]
    docs = [{"source": u("/tune.abc"), "collection": host, "text": TUNE, "encoding": "utf-8", "final_url": u("/tune.abc")},
            {"source": u("/latin1.abc"), "collection": host, "text": LATIN1_TUNE, "encoding": "latin-1", "final_url": u("/latin1.abc")},
            {"source": u("/files/b.abc"), "collection": host, "text": B_TUNE, "encoding": "utf-8", "final_url": u("/files/b.abc")}]
    # Without following, a page of links only is a page without ABC.
    counters = run_scrape(urls, docs, [(u("/index.html"), "not_abc")],
                          timeout=2, delay=0, per_host_concurrency=3, follow_links=False)
    assert server.count() == 4 and "link_found" not in counters
