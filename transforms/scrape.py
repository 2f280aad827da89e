"""Scraping ABC tunes over HTTP(S): plain ``.abc`` files and HTML pages that show or link to ABC.

Two layers:

* pure functions with no Beam in them: ``fetch`` (polite HTTP GET with retries, a wall-clock
  deadline per attempt, redirects followed only to http(s) on the same host, and an on-disk
  cache of complete responses), ``extract_abc`` (ABC texts and ``.abc`` links in a response), ``host_of`` and
  ``read_url_list``;
* ``ScrapeAbc``, the Beam transform that fetches a PCollection of URLs politely (one host is
  fetched sequentially, with a delay between requests) and follows pages' ``.abc`` links once.

Every failure is a row of the rejects table (``schemas.tables.REJECTS``) with stage ``fetch``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from html.parser import HTMLParser
from http.client import HTTPException, IncompleteRead, InvalidURL
from typing import NamedTuple
from urllib.parse import quote, urldefrag, urljoin, urlsplit, urlunsplit

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from schemas.files import atomic_write
from transforms.records import decode_text, looks_binary, reject_row

DEFAULT_USER_AGENT = "folkrnn/0.1 (+https://github.com/folkrnn/folkrnn; ABC tune ingest)"
STAGE = "fetch"
# Seconds one attempt may take in all: connect, redirects, headers and body (``--timeout``).
DEFAULT_TIMEOUT = 30.0
# Redirects followed per attempt; more is a loop or a maze, and becomes a too_many_redirects reject.
MAX_REDIRECTS = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# The collection of a URL that has no readable host (``http://[::1/x``): its reject row goes here.
BAD_URL_COLLECTION = "bad-url"
# Bumped when what a cache entry promises changes. Format 2: bodies are complete (never cut short
# by a timeout or a closed connection) and came from the URL's own host unless --follow-offsite.
# Entries of older formats may hold truncated or off-host bodies, so they are fetched again once.
CACHE_FORMAT = 2
_READ_CHUNK = 64 * 1024
# A server may ask for a long pause in Retry-After; waiting more than this stalls a whole host's
# queue, so longer requests are cut to the cap (the retry may then fail and become a reject).
MAX_RETRY_AFTER = 60.0
# Tune collections are small; a body larger than this is not an ABC file and would only eat memory.
MAX_BODY_BYTES = 50 * 1024 * 1024
# How much of a non-ABC body a reject row keeps in ``raw``, enough to see what the page was.
RAW_SNIPPET_CHARS = 2000

ABC_MEDIA_TYPES = {"text/vnd.abc", "text/x-abc", "text/plain"}
HTML_MEDIA_TYPES = {"text/html", "application/xhtml+xml"}

_X_LINE = re.compile(r"^[ \t]*X:", re.MULTILINE)
_K_LINE = re.compile(r"^[ \t]*K:", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    """What one ``fetch`` got: a response body, or an error saying why there is none."""

    url: str  # as requested
    status: int | None  # HTTP status of the last attempt; None when no response came
    content_type: str  # the Content-Type header as sent, "" when absent
    body: bytes
    from_cache: bool = False
    error: str | None = None  # a reject reason code (http_404, timeout, ...); None on success
    attempts: int = 0  # requests made; 0 when served from the cache
    final_url: str = ""  # after redirects
    message: str = ""  # on error: what happened, in words

    @property
    def ok(self) -> bool:
        return self.error is None


def host_of(url: str) -> str:
    """The host a URL points at, lower-case, with its port when one is written (``example.org:8080``).

    Politeness limits and the ``collection`` of scraped tunes are both per host. A URL with no
    readable host gets ``BAD_URL_COLLECTION``, so its reject row still has a collection.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # an unclosed IPv6 bracket and the like
        return BAD_URL_COLLECTION
    host = (parts.hostname or "").lower()
    if not host:
        return BAD_URL_COLLECTION
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: keep the host alone
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{host}:{port}" if port is not None and port != default else host


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched (not http(s), no host, a malformed host or port), or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as err:
        return str(err)
    if parts.scheme.lower() not in ("http", "https"):
        return "not an http(s) URL"
    if not parts.hostname:
        return "no host name"
    if any(ch.isspace() or not ch.isprintable() for ch in parts.netloc):
        return "white space or control characters in the host name"
    return None


def fetch(
    url: str,
    *,
    cache_dir: str | None,
    user_agent: str = DEFAULT_USER_AGENT,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = 3,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    refresh: bool = False,
    max_retry_after: float = MAX_RETRY_AFTER,
    follow_offsite: bool = False,
) -> FetchResult:
    """GET ``url``, politely and at most once ever when ``cache_dir`` is given.

    Each attempt has ``timeout`` seconds in all (connect, redirects, headers and body); a body
    that is cut short, by that deadline or by the server closing early, is an error, never data.
    Redirects are followed only to http(s), at most ``MAX_REDIRECTS`` of them, and only on the
    URL's own host and port unless ``follow_offsite``; ``final_url`` says where the body came from.

    Retries (up to ``retries`` times after the first attempt) on HTTP 5xx, 429, timeouts,
    connection errors and truncated bodies, waiting ``backoff * 2**n`` seconds, or what
    ``Retry-After`` asks up to ``max_retry_after``. Other 4xx are final: asking again would get
    the same answer. Only complete 200 responses are cached, so failures are tried again on the
    next run; a cached URL is not requested again unless ``refresh`` is set.
    """
    url = url.strip()
    problem = url_problem(url)
    if problem:
        return FetchResult(url, None, "", b"", error="bad_url", message=problem)
    if cache_dir and not refresh:
        cached = _cache_read(cache_dir, url)
        if cached is not None:
            return _apply_redirect_policy(cached, follow_offsite)
    result = _fetch_with_retries(url, user_agent, timeout, retries, backoff, sleep, max_retry_after, follow_offsite)
    if cache_dir and result.ok and result.status == 200:
        _cache_write(cache_dir, result)
    return result


def _fetch_with_retries(
    url: str,
    user_agent: str,
    timeout: float,
    retries: int,
    backoff: float,
    sleep: Callable[[float], None],
    max_retry_after: float,
    follow_offsite: bool,
) -> FetchResult:
    attempt = 0
    while True:
        attempt += 1
        result, retry_after = _fetch_once(url, user_agent, timeout, follow_offsite)
        result = dataclasses.replace(result, attempts=attempt)
        if result.ok or not _retryable(result) or attempt > retries:
            return result
        wait = backoff * 2 ** (attempt - 1)
        if retry_after is not None:
            wait = min(retry_after, max_retry_after)
        sleep(wait)


def _retryable(result: FetchResult) -> bool:
    if result.error in ("timeout", "connection_error", "truncated"):
        return True
    return result.status is not None and (result.status >= 500 or result.status == 429)


# --------------------------------------------------------------------------------------------
# One attempt: a deadline over all of it, redirects decided here rather than by urllib
# --------------------------------------------------------------------------------------------


class _Deadline:
    """A wall-clock limit on one attempt: connect, every redirect hop, headers and body together.

    A socket timeout bounds each read, not their sum: a server sending a byte a second never
    trips it. So a timer shuts the attempt's sockets down when time is up; the blocked read then
    returns or fails at once, and ``expired`` tells the caller that it was the deadline.
    (Connecting, and a TLS handshake, are bounded by the socket timeout: what is left of the time.)
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(0.001, self._end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True  # set before the shutdown, so a reader woken by it sees the flag
            sockets = list(self._sockets)
        for sock in sockets:
            _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown, also for TLS sockets: it only wakes the reader, and leaves
        # the TLS object (in use by the reading thread) alone.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: that attempt is over anyway


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, deadline: _Deadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, deadline: _Deadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPConnection, deadline=self._deadline), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPSConnection, deadline=self._deadline), req)


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib with http(s) only (no ftp, file or data handlers to reach) and no redirect handler:
    a 3xx comes back as an HTTPError and ``_fetch_once`` decides whether to follow it.
    Proxies from the environment (http_proxy, ...) still apply."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _WatchedHTTPHandler(deadline),
        _WatchedHTTPSHandler(deadline),
    ):
        opener.add_handler(handler)
    return opener


class _BodyTooLarge(Exception):
    pass


class _Truncated(Exception):
    """The connection ended before the body's Content-Length."""


class _Redirect(NamedTuple):
    status: int
    location: str


def _fetch_once(url: str, user_agent: str, timeout: float, follow_offsite: bool) -> tuple[FetchResult, float | None]:
    """One attempt, redirects included. Returns the result and the Retry-After delay the server
    asked for, if any."""
    current = url
    with _Deadline(timeout) as deadline:
        opener = _opener(deadline)
        for _ in range(MAX_REDIRECTS + 1):
            outcome = _get(opener, url, current, user_agent, deadline)
            if not isinstance(outcome, _Redirect):
                return outcome
            current = _resolve_location(current, outcome.location)
            refused = _redirect_refusal(url, current, follow_offsite)
            if refused:
                reason, message = refused
                return FetchResult(url, outcome.status, "", b"", error=reason, final_url=current, message=message), None
    message = f"more than {MAX_REDIRECTS} redirects"
    return FetchResult(url, outcome.status, "", b"", error="too_many_redirects", final_url=current,
                       message=message), None


def _get(
    opener: urllib.request.OpenerDirector, url: str, current: str, user_agent: str, deadline: _Deadline
) -> tuple[FetchResult, float | None] | _Redirect:
    """One GET of ``current`` (``url`` after the redirects so far): a result, or where to go next."""
    request = urllib.request.Request(_quote_url(current), headers={"User-Agent": user_agent, "Accept": "*/*"})
    try:
        with opener.open(request, timeout=deadline.remaining()) as response:
            body = _read_body(response)
            if deadline.expired:  # the watchdog may have ended the body early: what came is not kept
                raise TimeoutError
            content_type = response.headers.get("Content-Type", "")
            return FetchResult(url, response.status, content_type, body, final_url=current), None
    except urllib.error.HTTPError as err:
        with err:  # closes the error response's socket
            location = err.headers.get("Location") if err.headers else None
            if err.code in REDIRECT_CODES and location:
                return _Redirect(err.code, location)
            reason = f"HTTP {err.code} {err.reason}".strip()
            retry_after = _parse_retry_after(err.headers.get("Retry-After") if err.headers else None)
            return FetchResult(url, err.code, "", b"", error=f"http_{err.code}", final_url=current,
                               message=reason), retry_after
    except (HTTPException, OSError, ValueError, _BodyTooLarge, _Truncated) as err:
        error, message = _classify(err, deadline)
        return FetchResult(url, None, "", b"", error=error, final_url=current, message=message), None


def _read_body(response: http.client.HTTPResponse) -> bytes:
    """The whole body, or an exception: too large, or shorter than its Content-Length."""
    expected = response.length  # Content-Length as sent; None when chunked or absent
    if expected is not None and expected > MAX_BODY_BYTES:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    # read1 makes one system call at a time, so a shutdown by the deadline is seen at once
    # (read(n) keeps reading until it has n bytes).
    while chunk := response.read1(_READ_CHUNK):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
    if expected is not None and size < expected:
        raise _Truncated(f"the body ended after {size} of {expected} bytes (Content-Length)")
    return b"".join(chunks)


def _classify(err: BaseException, deadline: _Deadline) -> tuple[str, str]:
    """A failed GET as (reason code, message). The deadline is checked first: whatever its
    shutdown made the reader see (end of data, a reset, a TLS error), the cause was time."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if deadline.expired or isinstance(reason, TimeoutError):
        return "timeout", f"no complete response within {deadline.seconds:g} s"
    if isinstance(err, _BodyTooLarge):
        return "too_large", f"body larger than {MAX_BODY_BYTES} bytes"
    if isinstance(err, _Truncated):
        return "truncated", str(err)
    if isinstance(err, IncompleteRead):  # a chunked body that stopped mid-way
        return "truncated", f"the body ended after {len(err.partial)} bytes, mid-chunk"
    if isinstance(reason, (InvalidURL, ValueError)):  # urllib and IDNA refuse some URLs only when opening them
        return "bad_url", str(reason)
    if isinstance(err, urllib.error.URLError):  # connect failures: refused, DNS, TLS
        return "connection_error", str(err.reason)
    return "connection_error", f"{type(err).__name__}: {err}"  # connection dropped mid-response


def _resolve_location(current: str, location: str) -> str:
    try:
        return urldefrag(urljoin(current, location.strip()))[0]
    except ValueError:  # a malformed Location: kept as sent, so the reject shows it
        return location.strip()


def _redirect_refusal(url: str, target: str, follow_offsite: bool) -> tuple[str, str] | None:
    """Why a redirect from ``url`` to ``target`` is not followed, as (reason, message), or None."""
    problem = url_problem(target)
    if problem:
        # Not http(s) (ftp, file, data, ...) or malformed: nothing but HTTP is ever spoken.
        return "redirect_refused", problem
    if not follow_offsite and host_of(target) != host_of(url):
        return "redirect_offsite", f"{host_of(target)} is not {host_of(url)}"
    return None


def _apply_redirect_policy(cached: FetchResult, follow_offsite: bool) -> FetchResult:
    """A cached body obeys today's redirect rules too (it may date from a --follow-offsite run)."""
    refused = _redirect_refusal(cached.url, cached.final_url or cached.url, follow_offsite)
    if refused is None:
        return cached
    reason, message = refused
    return dataclasses.replace(cached, body=b"", content_type="", error=reason, message=message)


def _quote_url(url: str) -> str:
    """Percent-encode what a browser would (spaces, non-ASCII) in links people write by hand;
    http.client refuses such URLs. Existing %-escapes and URL syntax characters are kept; the host
    is left alone (a non-ASCII host name goes through IDNA when connecting, not %-escapes)."""
    parts = urlsplit(url)
    safe = ":/?#[]@!$&'()*+,;=%~"
    return urlunsplit(parts._replace(path=quote(parts.path, safe), query=quote(parts.query, safe), fragment=""))


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date; anything else is ignored."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


# --------------------------------------------------------------------------------------------
# The response cache: <sha256 of URL>.body plus <sha256 of URL>.json
# --------------------------------------------------------------------------------------------


def _cache_paths(cache_dir: str, url: str) -> tuple[str, str]:
    stem = os.path.join(cache_dir, hashlib.sha256(url.encode("utf-8")).hexdigest())
    return stem + ".body", stem + ".json"


def _cache_read(cache_dir: str, url: str) -> FetchResult | None:
    body_path, meta_path = _cache_paths(cache_dir, url)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        with open(body_path, "rb") as f:
            body = f.read()
    except (OSError, ValueError):
        return None
    # The body is written before its sidecar; a length mismatch means a crash between the two
    # writes of a refresh, so the entry is not trusted and the URL is fetched again.
    if meta.get("format") != CACHE_FORMAT or meta.get("url") != url or meta.get("length") != len(body):
        return None
    return FetchResult(
        url, meta.get("status", 200), meta.get("content_type", ""), body,
        from_cache=True, final_url=meta.get("final_url", url),
    )


def _cache_write(cache_dir: str, result: FetchResult) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    body_path, meta_path = _cache_paths(cache_dir, result.url)
    meta = {
        "format": CACHE_FORMAT,
        "url": result.url,
        "final_url": result.final_url,
        "status": result.status,
        "content_type": result.content_type,
        "length": len(result.body),
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Body first, sidecar last: the sidecar's presence is what makes an entry count.
    atomic_write(body_path, result.body)
    atomic_write(meta_path, json.dumps(meta, indent=1))


# --------------------------------------------------------------------------------------------
# Finding ABC in a response
# --------------------------------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _has_abc_line(text: str) -> bool:
    return bool(_X_LINE.search(text) or _K_LINE.search(text))


def _has_abc_tune(text: str) -> bool:
    return bool(_X_LINE.search(text) and _K_LINE.search(text))


def _is_abc_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".abc")


class _PageParser(HTMLParser):
    """Collects ``<pre>`` blocks, the page's visible text, ``<a href>`` targets and ``<base href>``."""

    # Tags that end a line of text in a browser; without the newline, "X:1<br>K:G" reads as one line.
    BREAKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
              "dl", "dt", "dd", "hr", "blockquote", "section", "article", "header", "footer", "pre"}
    # Not "head": its end tag is optional, and a missing one would hide the whole page.
    INVISIBLE = {"script", "style", "title", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # &amp; &gt; &#39; ... become characters
        self.pre_blocks: list[str] = []
        self.text: list[str] = []
        self.hrefs: list[str] = []
        self.base: str | None = None
        self._pre: list[str] | None = None
        self._pre_depth = 0
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" or tag == "base":
            href = dict(attrs).get("href")
            if href and tag == "a":
                self.hrefs.append(href)
            elif href and self.base is None:
                self.base = href
        if tag in self.INVISIBLE:
            self._hidden += 1
        if tag == "pre":
            self._pre_depth += 1
            if self._pre_depth == 1:
                self._pre = []
        if tag in self.BREAKS:
            self._data("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in self.INVISIBLE:  # <script/> opens nothing
            self._hidden -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.INVISIBLE and self._hidden:
            self._hidden -= 1
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
            if self._pre_depth == 0 and self._pre is not None:
                self.pre_blocks.append("".join(self._pre))
                self._pre = None
        if tag in self.BREAKS:
            self._data("\n")

    def handle_data(self, data: str) -> None:
        self._data(data)

    def _data(self, data: str) -> None:
        if self._hidden:
            return
        self.text.append(data)
        if self._pre is not None:
            self._pre.append(data)


def _tidy_pre(text: str) -> str:
    """A ``<pre>`` block as ABC: trailing spaces and the blank lines around it dropped."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def _tidy_page_text(text: str) -> str:
    """Visible page text as ABC: lines left-aligned (source indentation is not ABC), runs of
    blank lines cut to one (a blank line ends a tune in ABC, more carry no meaning)."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def _abc_links(page_url: str, base: str | None, hrefs: Iterable[str]) -> list[str]:
    try:
        base_url = urljoin(page_url, base) if base else page_url
    except ValueError:  # a malformed <base href>: links are read against the page itself
        base_url = page_url
    links: list[str] = []
    seen: set[str] = set()
    for href in hrefs:
        try:
            link = urldefrag(urljoin(base_url, href.strip()))[0]  # the parser unescaped it
            wanted = urlsplit(link).scheme.lower() in ("http", "https") and _is_abc_url(link)
        except ValueError:
            # A malformed link (``http://[::1/x.abc``) to an .abc file is still followed, as
            # written: it becomes a bad_url reject naming the page, rather than vanishing.
            link = href.strip()
            wanted = link.lower().split("#", 1)[0].endswith(".abc")
        if wanted and link not in seen:
            seen.add(link)
            links.append(link)
    return links


def _extract_from_html(url: str, text: str) -> tuple[list[str], list[str]]:
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    texts = [_tidy_pre(block) for block in parser.pre_blocks if _has_abc_line(block)]
    if not texts:
        # Page text is noisy (menus, prose), so it counts only with both X: and K: lines.
        page_text = _tidy_page_text("".join(parser.text))
        if _has_abc_tune(page_text):
            texts = [page_text]
    return texts, _abc_links(url, parser.base, parser.hrefs)


def extract_abc(url: str, body: bytes, content_type: str | None) -> tuple[list[str], list[str]]:
    """ABC texts in a response, and the absolute URLs of ``.abc`` files an HTML page links to.

    * ABC content (Content-Type text/vnd.abc or text/plain, a URL ending ``.abc``, or an unknown
      type whose text has ``X:`` and ``K:`` lines): ``[decoded text]``, when it has an ``X:`` or
      ``K:`` line at all.
    * HTML (text/html, or an unknown type whose body starts with ``<``): the ``<pre>`` blocks that
      hold ABC (entities unescaped, tags stripped); when none does, the page's visible text if it
      has ``X:`` and ``K:`` lines. Links: ``<a href>`` ending in ``.abc``, absolute, deduplicated,
      in page order.
    * Binary data (see ``looks_binary``) is never ABC: ``([], [])``.
    """
    if looks_binary(body):
        return [], []
    text, _ = decode_text(body)
    media = _media_type(content_type)
    starts_with_tag = text.lstrip().startswith("<")
    if media in HTML_MEDIA_TYPES or (media not in ABC_MEDIA_TYPES and not _is_abc_url(url) and starts_with_tag):
        return _extract_from_html(url, text)
    declared_abc = media in ABC_MEDIA_TYPES or _is_abc_url(url)
    if (declared_abc and _has_abc_line(text)) or _has_abc_tune(text):
        return [text], []
    return [], []


def read_url_list(path: str) -> list[str]:
    """URLs from a list file: one per line; blank lines and ``#`` comments (whole-line, or after
    whitespace at the end of a line) are ignored. Order is kept, duplicates are not removed here."""
    urls: list[str] = []
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            line = re.split(r"\s#", line, maxsplit=1)[0].strip()
            if line and not line.startswith("#"):
                urls.append(line)
    return urls


# --------------------------------------------------------------------------------------------
# Beam
# --------------------------------------------------------------------------------------------


def _shard_of(url: str, shards: int) -> int:
    # hashlib, not hash(): str hashes differ between worker processes, this must not.
    return int(hashlib.sha256(url.encode("utf-8")).hexdigest()[:8], 16) % max(1, shards)


def _describe_failure(result: FetchResult, timeout: float, referrer: str | None) -> str:
    tries = f"{result.attempts} attempt{'s' if result.attempts != 1 else ''}"
    found = f" (linked from {referrer})" if referrer else ""
    err = result.error or ""
    get = f"GET {result.url}{found}"
    if err == "bad_url":
        return f"{result.url}{found} is not a valid http(s) URL ({result.message}); fix or remove it"
    if err == "timeout":
        return (f"{get}: no complete response within {timeout:g} s (--timeout) after {tries}; nothing kept: "
                "the server is slow or down: try later or raise --timeout")
    if err == "truncated":
        return (f"{get}: {result.message} after {tries}: the server closed the connection early; "
                "nothing kept: try later")
    if err == "redirect_refused":
        return (f"{get} redirected to {result.final_url!r} ({result.message}): only http(s) redirects "
                "are followed; not fetched")
    if err == "redirect_offsite":
        return (f"{get} redirected to {result.final_url}, another host ({result.message}); not followed: "
                "give --follow-offsite to follow redirects to other hosts, or list the final URL itself")
    if err == "too_many_redirects":
        return (f"{get}: {result.message} (the last to {result.final_url}), a redirect loop?; "
                "check the URL in a browser")
    if err == "connection_error":
        return (f"{get}: could not connect or the connection dropped "
                f"({result.message}) after {tries}; check the host name and network, or try later")
    if err == "too_large":
        return f"{get}: {result.message}, too big to be an ABC file; skipped"
    if result.status == 404 or result.status == 410:
        return f"{get} returned {result.message} after {tries}: the file is gone; fix or remove the URL"
    if result.status is not None and (result.status >= 500 or result.status == 429):
        return (f"{get} returned {result.message} on all {tries}: "
                "the server is failing or busy; re-run later (successful fetches are cached)")
    return f"{get} returned {result.message} after {tries}; check the URL or access rights"


class _FetchHostDoFn(beam.DoFn):
    """Fetches one (host, shard) group's URLs one after another, ``delay`` seconds apart.

    Input: ``((host, shard), [(url, referrer | None), ...])``. Outputs: document dicts (main),
    reject rows (``"rejects"``), ``(link, page_url)`` pairs (``"links"``) when following links.
    Holds only settings, no sockets or sessions, so it pickles to any runner.
    """

    def __init__(self, settings: dict, delay: float, follow_links: bool) -> None:
        self._settings = settings
        self._delay = delay
        self._follow = follow_links

    def process(self, element: tuple[tuple[str, int], Iterable[tuple[str, str | None]]]) -> Iterator:
        (host, _), pairs = element
        last_request: float | None = None
        for url, referrer in sorted(set(pairs), key=lambda p: (p[0], p[1] or "")):
            if last_request is not None and self._delay > 0:
                # Polite: wait out what is left of the delay since this host's last real request.
                remaining = self._delay - (time.monotonic() - last_request)
                if remaining > 0:
                    time.sleep(remaining)
            try:
                result = fetch(url, **self._settings)
                outputs = list(self._outputs(host, url, referrer, result))
            except Exception as err:  # one odd page or URL must not end a run: a reject row instead
                yield self._reject(host, url, "unexpected_error",
                                   f"GET {url}: {type(err).__name__}: {err}; a bug in the scraper, please report it")
                continue
            if not result.from_cache and result.attempts:
                last_request = time.monotonic()
            _count("cache_hit" if result.from_cache else "fetched_from_network")
            _count("requests", result.attempts)
            yield from outputs

    def _outputs(self, host: str, url: str, referrer: str | None, result: FetchResult) -> Iterator:
        if not result.ok:
            yield self._reject(host, url, result.error or "fetch_failed",
                               _describe_failure(result, self._settings["timeout"], referrer))
            return
        if looks_binary(result.body):
            yield self._reject(host, url, "binary", self._not_abc_detail(result, referrer, "binary data"))
            return
        if result.final_url and result.final_url != url:
            _count("redirected")
        texts, links = extract_abc(result.final_url or url, result.body, result.content_type)
        if self._follow:
            for link in links:
                _count("link_found")
                yield pvalue.TaggedOutput("links", (link, url))
        if texts:
            _count("document")
            # One document per URL, pre blocks joined by a blank line (which ends a tune in ABC):
            # downstream ids are (collection, source, position), so one source must be one text.
            yield {"source": url, "collection": host, "text": "\n\n".join(t.rstrip("\n") for t in texts) + "\n",
                   "encoding": decode_text(result.body)[1], "final_url": result.final_url or url}
        elif self._follow and links:
            _count("index_page")  # a page of links only: its worth is in the links followed
        else:
            text = decode_text(result.body)[0][:RAW_SNIPPET_CHARS]
            what = f"no ABC (no X:/K: lines) in {_media_type(result.content_type) or 'untyped'} content"
            yield self._reject(host, url, "not_abc", self._not_abc_detail(result, referrer, what), raw=text)

    @staticmethod
    def _not_abc_detail(result: FetchResult, referrer: str | None, what: str) -> str:
        found = f" (linked from {referrer})" if referrer else ""
        cached = " (from cache)" if result.from_cache else ""
        moved = f" (redirected to {result.final_url})" if result.final_url and result.final_url != result.url else ""
        return f"GET {result.url}{found}{moved} returned HTTP {result.status}{cached} but {what}; not a tune source"

    @staticmethod
    def _reject(host: str, url: str, reason: str, detail: str, raw: str = "") -> pvalue.TaggedOutput:
        _count(reason)
        row = reject_row(collection=host, source=url, position=0, stage=STAGE, reason=reason, detail=detail, raw=raw)
        return pvalue.TaggedOutput("rejects", row)


def _count(name: str, n: int = 1) -> None:
    if n:
        Metrics.counter("scrape", name).inc(n)


class _FetchRound(beam.PTransform):
    """(url, referrer) pairs -> fetched, keyed by (host, shard) so each host is fetched politely."""

    def __init__(self, settings: dict, delay: float, per_host_concurrency: int, follow_links: bool) -> None:
        super().__init__()
        self._settings = settings
        self._delay = delay
        self._shards = per_host_concurrency
        self._follow = follow_links

    def expand(self, pairs: pvalue.PCollection) -> pvalue.DoOutputsTuple:
        shards = self._shards
        return (
            pairs
            | "KeyByHostShard" >> beam.Map(lambda p: ((host_of(p[0]), _shard_of(p[0], shards)), p))
            | "GroupByHostShard" >> beam.GroupByKey()
            | "FetchSequentially" >> beam.ParDo(_FetchHostDoFn(self._settings, self._delay, self._follow))
            .with_outputs("rejects", "links", main="documents")
        )


def _new_links(grouped: tuple[str, dict[str, list]]) -> Iterator[tuple[str, str]]:
    """A link is fetched in round two only when round one did not already have its URL."""
    url, sides = grouped
    referrers = list(sides["links"])
    if referrers and not list(sides["inputs"]):
        yield url, min(referrers)


class ScrapeResult(NamedTuple):
    """What ``ScrapeAbc`` returns: two PCollections (a named tuple, so ``docs, rejects = ...``
    and ``result.rejects`` both work)."""

    documents: pvalue.PCollection
    rejects: pvalue.PCollection


class ScrapeAbc(beam.PTransform):
    """Fetches ABC tunes from HTTP(S) URLs, politely, following pages' ``.abc`` links once.

    Input: a PCollection of URL strings (blank strings are dropped, duplicates fetched once).

    Output: a ``ScrapeResult`` named tuple of two PCollections:

    * ``documents``: one dict per URL that held ABC::

          {"source": url, "collection": host, "text": str, "encoding": "utf-8" | "latin-1",
           "final_url": str}

      where ``host`` is ``host_of(url)``, ``text`` is the ``.abc`` file's text, or a page's
      ABC ``<pre>`` blocks (or its ABC-bearing text) joined by blank lines, and ``final_url`` is
      where the body came from after redirects (``source`` stays the URL asked for, so ids and
      the cache key do not move when a site reshuffles; the cache sidecar keeps ``final_url``);
    * ``rejects``: rows of ``schemas.tables.REJECTS`` with stage ``"fetch"`` and reason
      ``http_<status>``, ``timeout``, ``truncated``, ``connection_error``, ``redirect_refused``
      (a redirect to anything but http(s)), ``redirect_offsite`` (to another host or port,
      without ``follow_offsite``), ``too_many_redirects``, ``not_abc``, ``binary``, ``bad_url``,
      ``too_large`` or ``unexpected_error``; the detail names the redirect target when there was one.

    Every input URL and every followed link ends in exactly one document or one reject, except
    HTML pages that hold only ``.abc`` links (counted as ``index_page``). Counters in namespace
    ``scrape``: one per reject reason, plus ``document``, ``index_page``, ``link_found``, ``redirected``,
    ``cache_hit`` and ``fetched_from_network``.

    Politeness: URLs are keyed by (host, shard), shard in ``range(per_host_concurrency)``; each
    key's URLs are fetched one at a time in sorted order, ``delay`` seconds apart, with the
    project's User-Agent; each attempt gets ``timeout`` seconds in all (see ``fetch``). With ``cache_dir`` every 200 response is kept on disk and never fetched
    again, so a re-run (or a resumed crawl) costs the servers nothing.

    Example::

        urls = p | beam.Create(read_url_list("urls.txt"))
        docs, rejects = urls | "Scrape" >> ScrapeAbc(cache_dir="cache/http")
    """

    def __init__(
        self,
        *,
        cache_dir: str | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 1.0,
        delay: float = 1.0,
        per_host_concurrency: int = 1,
        follow_links: bool = True,
        refresh: bool = False,
        follow_offsite: bool = False,
    ) -> None:
        super().__init__()
        if per_host_concurrency < 1:
            raise ValueError(f"per_host_concurrency must be at least 1, got {per_host_concurrency}")
        if not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        if not 0 <= delay < float("inf"):
            raise ValueError(f"delay must be zero or more seconds, got {delay}")
        self._settings = {
            "cache_dir": cache_dir, "user_agent": user_agent, "timeout": timeout,
            "retries": retries, "backoff": backoff, "refresh": refresh, "follow_offsite": follow_offsite,
        }
        self._delay = delay
        self._shards = per_host_concurrency
        self._follow = follow_links

    def expand(self, urls: pvalue.PCollection) -> ScrapeResult:
        inputs = (
            urls
            | "StripUrls" >> beam.Map(lambda u: u.strip())
            | "DropBlank" >> beam.Filter(bool)
            | "DistinctUrls" >> beam.Distinct()
        )
        pages = (
            inputs
            | "NoReferrer" >> beam.Map(lambda u: (u, None))
            | "FetchUrls" >> _FetchRound(self._settings, self._delay, self._shards, self._follow)
        )
        documents = [pages.documents]
        rejects = [pages.rejects]
        if self._follow:
            links = (
                {
                    "inputs": inputs | "KeyInputs" >> beam.Map(lambda u: (u, "")),
                    "links": pages.links,
                }
                | "JoinLinksWithInputs" >> beam.CoGroupByKey()
                | "KeepNewLinks" >> beam.FlatMap(_new_links)
            )
            linked = links | "FetchLinks" >> _FetchRound(self._settings, self._delay, self._shards, False)
            documents.append(linked.documents)
            rejects.append(linked.rejects)
        return ScrapeResult(
            documents=tuple(documents) | "FlattenDocuments" >> beam.Flatten(),
            rejects=tuple(rejects) | "FlattenRejects" >> beam.Flatten(),
        )
