"""Scraper hardening (issue 13, items 3, 5 and 7): redirects stay on HTTP and on the host, every
attempt has a deadline, truncated bodies are never kept, malformed URLs are rejects, scraping
flags are checked. All against real servers on 127.0.0.1; nothing beyond loopback."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from folkrnn.pipeline import cli
from folkrnn.pipeline.beam.scrape import ScrapeAbc
from folkrnn.pipeline.run_ingest import IngestPlan, build_ingest
from folkrnn.transforms.scrape import BAD_URL_COLLECTION, MAX_REDIRECTS, fetch, host_of

TUNE = "X:1\nT:The Kesh\nM:6/8\nL:1/8\nK:G\n|:GAG GAB|ABA ABd|edd gdd|edB dBA:|\n|:g2e dBA|GAB AGE:|\n"
PAGE_TUNE = "X:2\nT:Page Reel\nM:4/4\nL:1/8\nK:D\n|:d2fd A2FA|d2fd e2ce|d2fd A2FA|G2E2 D4:|\n"
MALFORMED_LINK = "http://[::2/y.abc"
PAGE = f'<html><body><pre>\n{PAGE_TUNE}</pre><a href="{MALFORMED_LINK}">broken</a></body></html>'
DRIP_SECONDS = 0.2  # one byte this often: each read is quick, the whole never ends in time


class Site(ThreadingHTTPServer):
    """A small site with redirects (set per test), slow and short responses; records requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SiteHandler)
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.redirects: dict[str, str] = {}  # path -> Location
        self.stop = threading.Event()  # ends the dripping handlers at teardown

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for p in self.requests if path is None or p == path)


class SiteHandler(BaseHTTPRequestHandler):
    server: Site

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append(self.path)
        try:
            self.route(self.path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the deadline): nothing more to send

    def route(self, path: str) -> None:
        if path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/tune.abc":
            self.head(200, len(TUNE))
            self.wfile.write(TUNE.encode())
        elif path == "/page.html":
            self.head(200, len(PAGE), "text/html")
            self.wfile.write(PAGE.encode())
        elif path == "/drip-body.abc":  # headers at once, then the body a byte at a time
            self.head(200, len(TUNE))
            self.drip(TUNE.encode())
        elif path == "/drip-unsized.abc":  # no Content-Length: only the deadline can tell it was cut
            self.head(200, None)
            self.drip(TUNE.encode())
        elif path == "/drip-headers.abc":  # never gets past the headers
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Slow: ")
            self.drip(b"a" * 200)
        elif path == "/short.abc":  # promises more than it sends, then closes (HTTP/1.0)
            self.head(200, 10 * len(TUNE))
            self.wfile.write(TUNE.encode())
        elif path == "/short-chunked.abc":  # a chunked body that stops before its last chunk
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.wfile.write(b"%x\r\n%s\r\n" % (len(TUNE), TUNE.encode()))
            self.close_connection = True
        else:
            self.head(404, 0)

    def head(self, status: int, length: int | None, content_type: str = "text/vnd.abc") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def drip(self, data: bytes) -> None:
        for byte in data:
            if self.server.stop.wait(DRIP_SECONDS):
                return
            self.wfile.write(bytes([byte]))


def serve() -> Site:
    site = Site()
    threading.Thread(target=site.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return site


def close(site: Site) -> None:
    site.stop.set()
    site.shutdown()
    site.server_close()


@pytest.fixture
def site():
    s = serve()
    yield s
    close(s)


@pytest.fixture
def other_site():
    """Another server on another port of 127.0.0.1: another host as far as redirects go."""
    s = serve()
    yield s
    close(s)


@pytest.fixture
def listener():
    """A plain TCP listener standing in for an FTP server: it only notes whether anyone connected."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    yield sock
    sock.close()


def connected(listener: socket.socket, wait: float = 0.2) -> bool:
    readable, _, _ = select.select([listener], [], [], wait)
    if readable:
        conn, _ = listener.accept()
        conn.close()
    return bool(readable)


def settings(tmp_path, **kw) -> dict:
    return {"cache_dir": str(tmp_path / "cache"), "timeout": 2, "retries": 3, "backoff": 0.001, **kw}


def cached_files(tmp_path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(os.listdir(cache)) if cache.exists() else []


def run_scrape(urls: list[str], docs: list[dict], rejects: list[tuple[str, str]], **kw) -> list[str]:
    """ScrapeAbc on the DirectRunner: asserts documents and (source, reason) of rejects;
    returns the rejects' details."""
    p = TestPipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    scraped = p | beam.Create(urls) | ScrapeAbc(**kw)
    assert_that(scraped.documents, equal_to(docs), label="Documents")
    assert_that(scraped.rejects | beam.Map(lambda r: (r["source"], r["reason"])), equal_to(rejects), label="Rejects")
    details_path = kw["cache_dir"] + ".details.json"
    scraped.rejects | beam.combiners.ToList() | beam.Map(
        lambda rows: open(details_path, "w").write(json.dumps(sorted(r["detail"] for r in rows))))
    p.run().wait_until_finish()
    with open(details_path) as f:
        return json.load(f)


# -- 3. redirects: http(s) only, same host and port unless --follow-offsite, bounded ---------------


def test_redirect_to_ftp_is_refused_and_nothing_connects(site, listener, tmp_path):
    ftp = f"ftp://127.0.0.1:{listener.getsockname()[1]}/tune.abc"
    site.redirects["/to-ftp.abc"] = ftp
    result = fetch(site.url("/to-ftp.abc"), **settings(tmp_path))
    assert result.error == "redirect_refused" and result.final_url == ftp
    assert result.attempts == 1 and result.body == b""  # final: no retries, so no FTP logins either
    assert not connected(listener)
    assert cached_files(tmp_path) == []
    # The listener does notice a connection, so the check above means something.
    with socket.create_connection(listener.getsockname()):
        assert connected(listener, wait=2)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "data:text/plain,X:1%0AK:G%0A", "http://[::1/x.abc",
                                    "gopher://127.0.0.1/x"])
def test_redirect_to_anything_but_http_is_refused(site, tmp_path, target):
    site.redirects["/away.abc"] = target
    result = fetch(site.url("/away.abc"), **settings(tmp_path))
    assert (result.error, result.final_url, result.body) == ("redirect_refused", target, b"")
    assert cached_files(tmp_path) == []


def test_redirect_to_another_port_is_refused_by_default(site, other_site, tmp_path):
    target = other_site.url("/tune.abc")
    site.redirects["/away.abc"] = target
    result = fetch(site.url("/away.abc"), **settings(tmp_path))
    assert (result.error, result.final_url) == ("redirect_offsite", target)
    assert other_site.count() == 0 and cached_files(tmp_path) == []


def test_follow_offsite_fetches_the_other_port_and_records_the_final_url(site, other_site, tmp_path):
    target = other_site.url("/tune.abc")
    site.redirects["/away.abc"] = target
    result = fetch(site.url("/away.abc"), **settings(tmp_path, follow_offsite=True))
    assert result.ok and result.body == TUNE.encode()
    assert (result.url, result.final_url) == (site.url("/away.abc"), target)
    assert other_site.count("/tune.abc") == 1
    [sidecar] = [name for name in cached_files(tmp_path) if name.endswith(".json")]
    with open(tmp_path / "cache" / sidecar) as f:
        assert json.load(f)["final_url"] == target
    # The cached body obeys the rules of the run that reads it: without follow_offsite it is refused.
    again = fetch(site.url("/away.abc"), **settings(tmp_path))
    assert again.from_cache and again.error == "redirect_offsite" and site.count() == 1


def test_same_host_redirect_is_followed_and_the_document_records_the_final_url(site, tmp_path):
    site.redirects["/moved.abc"] = "/tune.abc"  # relative, as servers often send
    site.redirects["/loop.abc"] = "/loop.abc"
    site.redirects["/to-ftp.abc"] = "ftp://127.0.0.1:9/tune.abc"
    site.redirects["/away.abc"] = "http://localhost:1/tune.abc"  # another host name
    doc = {"source": site.url("/moved.abc"), "collection": host_of(site.url("/")), "text": TUNE,
           "encoding": "utf-8", "final_url": site.url("/tune.abc")}
    details = run_scrape(
        [site.url(p) for p in ("/moved.abc", "/loop.abc", "/to-ftp.abc", "/away.abc")],
        [doc],
        [(site.url("/loop.abc"), "too_many_redirects"), (site.url("/to-ftp.abc"), "redirect_refused"),
         (site.url("/away.abc"), "redirect_offsite")],
        **settings(tmp_path, delay=0),
    )
    assert site.count("/loop.abc") == MAX_REDIRECTS + 1  # bounded, and not retried
    [refused] = [d for d in details if "/to-ftp.abc" in d]
    [offsite] = [d for d in details if "/away.abc" in d]
    [loop] = [d for d in details if "/loop.abc" in d]
    assert "redirected to 'ftp://127.0.0.1:9/tune.abc'" in refused and "only http(s)" in refused
    assert "redirected to http://localhost:1/tune.abc" in offsite and "--follow-offsite" in offsite
    assert f"more than {MAX_REDIRECTS} redirects" in loop


def test_cli_follow_offsite_passes_through_to_the_scraper(site, other_site, tmp_path, capsys):
    site.redirects["/away.abc"] = other_site.url("/tune.abc")
    out = str(tmp_path / "out")
    code = cli.main(["ingest", site.url("/away.abc"), "--follow-offsite", "--timeout", "5", "--delay", "0",
                     "--out", out, "--quiet", "--runner", "DirectRunner"])
    assert code == 0, capsys.readouterr().err
    tunes = pq.read_table(os.path.join(out, "tunes")).to_pylist()
    assert [t["source"] for t in tunes] == [site.url("/away.abc")]  # the id stays with the URL asked for
    assert other_site.count("/tune.abc") == 1


# -- 3. one deadline per attempt; a truncated body is never cached or kept -------------------------


@pytest.mark.parametrize("path", ["/drip-body.abc", "/drip-unsized.abc", "/drip-headers.abc"])
def test_a_server_dripping_bytes_hits_the_deadline(site, tmp_path, path):
    result = fetch(site.url(path), **settings(tmp_path, timeout=1, retries=0))
    assert result.error == "timeout" and result.body == b"" and result.attempts == 1
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize("path", ["/short.abc", "/short-chunked.abc"])
def test_a_body_cut_short_is_an_error_and_not_cached(site, tmp_path, path):
    result = fetch(site.url(path), **settings(tmp_path, retries=1))
    assert result.error == "truncated" and result.body == b""
    assert result.attempts == 2 and site.count(path) == 2  # the server may do better next time
    assert cached_files(tmp_path) == []


def test_slow_and_short_responses_are_rejects_and_only_whole_bodies_are_cached(site, tmp_path):
    doc = {"source": site.url("/tune.abc"), "collection": host_of(site.url("/")), "text": TUNE,
           "encoding": "utf-8", "final_url": site.url("/tune.abc")}
    details = run_scrape(
        [site.url(p) for p in ("/drip-body.abc", "/short.abc", "/tune.abc")],
        [doc],
        [(site.url("/drip-body.abc"), "timeout"), (site.url("/short.abc"), "truncated")],
        **settings(tmp_path, timeout=1, retries=0, delay=0),
    )
    [slow] = [d for d in details if "/drip-body.abc" in d]
    [short] = [d for d in details if "/short.abc" in d]
    assert "no complete response within 1 s (--timeout)" in slow and "raise --timeout" in slow
    assert "raise the timeout" not in slow  # the old hint named an option that did not exist
    assert f"the body ended after {len(TUNE)} of {10 * len(TUNE)} bytes" in short
    assert len([name for name in cached_files(tmp_path) if name.endswith(".body")]) == 1  # tune.abc only


def test_cache_entries_from_before_the_fix_are_fetched_again(site, tmp_path):
    fetch(site.url("/tune.abc"), **settings(tmp_path))
    [sidecar] = [tmp_path / "cache" / n for n in cached_files(tmp_path) if n.endswith(".json")]
    meta = json.loads(sidecar.read_text())
    del meta["format"]  # as the old scraper wrote it; its body may be truncated
    sidecar.write_text(json.dumps(meta))
    again = fetch(site.url("/tune.abc"), **settings(tmp_path))
    assert not again.from_cache and site.count("/tune.abc") == 2
    assert json.loads(sidecar.read_text())["format"] == 2  # rewritten: trusted from now on


# -- 5. a malformed URL is a reject row; the run goes on ---------------------------------------------

BAD_URLS = ["http://[::1/x.abc", "http://", "http://exa mple.com/", "http://127.0.0.1:99999/x.abc"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_fetch_malformed_url_is_bad_url_without_a_request(site, tmp_path, url):
    result = fetch(url, **settings(tmp_path))
    assert result.error == "bad_url" and result.attempts == 0 and result.message
    assert host_of(url)  # never raises; an unreadable host gets a collection of its own
    assert host_of("http://[::1/x.abc") == BAD_URL_COLLECTION


def test_ingest_with_malformed_urls_keeps_the_good_ones_and_counts_add_up(site, tmp_path):
    out = str(tmp_path / "out")
    for name in ("tunes", "duplicates", "rejects"):
        os.makedirs(os.path.join(out, name))
    plan = IngestPlan(urls=[site.url("/tune.abc"), site.url("/page.html"), *BAD_URLS])
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        build_ingest(p, plan, out, delay=0, timeout=5)
    tunes = pq.read_table(os.path.join(out, "tunes")).to_pylist()
    rejects = pq.read_table(os.path.join(out, "rejects")).to_pylist()
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert sorted(t["source"] for t in tunes) == [site.url("/page.html"), site.url("/tune.abc")]
    fetch_rejects = {r["source"]: r for r in rejects if r["stage"] == "fetch"}
    assert sorted(fetch_rejects) == sorted([*BAD_URLS, MALFORMED_LINK])
    assert {r["reason"] for r in fetch_rejects.values()} == {"bad_url"}
    assert "is not a valid http(s) URL" in fetch_rejects["http://[::1/x.abc"]["detail"]
    assert f"linked from {site.url('/page.html')}" in fetch_rejects[MALFORMED_LINK]["detail"]
    assert summary["read"] == summary["kept"] + summary["duplicates"] + summary["rejected"]
    assert (summary["read"], summary["kept"], summary["rejected"]) == (2 + 5, 2, 5)


# -- 7. scraping flags checked before any work -------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--per-host", "0"), ("--delay", "-1"), ("--timeout", "0"),
                                         ("--timeout", "nan"), ("--delay", "inf")])
def test_bad_scraping_flags_are_one_line_errors(tmp_path, flag, value, folkrnn_main):
    out = tmp_path / "out"
    done = folkrnn_main("ingest", "http://127.0.0.1:9/x.abc", flag, value, "--out", str(out))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"folkrnn ingest: error: {flag} must be")
    assert not out.exists()  # refused before any work
