"""Scraping ABC tunes over HTTP(S): plain ``.abc`` files and HTML pages that show or link to ABC.

Two layers:

* pure functions with no Beam in them: ``fetch`` (polite HTTP GET with retries and an on-disk
  cache), ``extract_abc`` (ABC texts and ``.abc`` links in a response), ``host_of`` and
  ``read_url_list``;
* ``ScrapeAbc``, the Beam transform that fetches a PCollection of URLs politely (one host is
  fetched sequentially, with a delay between requests) and follows pages' ``.abc`` links once.

Every failure is a row of the rejects table (``schemas.tables.REJECTS``) with stage ``fetch``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from html.parser import HTMLParser
from http.client import HTTPException
from typing import NamedTuple
from urllib.parse import quote, urldefrag, urljoin, urlsplit, urlunsplit

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.records import decode_text, looks_binary, reject_row

DEFAULT_USER_AGENT = "folkrnn/0.1 (+https://github.com/folkrnn/folkrnn; ABC tune ingest)"
STAGE = "fetch"
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

    Politeness limits and the ``collection`` of scraped tunes are both per host.
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: keep the host alone
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{host}:{port}" if port is not None and port != default else host


def fetch(
    url: str,
    *,
    cache_dir: str | None,
    user_agent: str = DEFAULT_USER_AGENT,
    timeout: float = 20,
    retries: int = 3,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    refresh: bool = False,
    max_retry_after: float = MAX_RETRY_AFTER,
) -> FetchResult:
    """GET ``url``, politely and at most once ever when ``cache_dir`` is given.

    Retries (up to ``retries`` times after the first attempt) on HTTP 5xx, 429, timeouts and
    connection errors, waiting ``backoff * 2**n`` seconds, or what ``Retry-After`` asks up to
    ``max_retry_after``. Other 4xx are final: asking again would get the same answer.
    Only 200 responses are cached, so failures are tried again on the next run; a cached URL is
    not requested again unless ``refresh`` is set.
    """
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return FetchResult(url, None, "", b"", error="bad_url", message="not an http(s) URL")
    if cache_dir and not refresh:
        cached = _cache_read(cache_dir, url)
        if cached is not None:
            return cached
    result = _fetch_with_retries(url, user_agent, timeout, retries, backoff, sleep, max_retry_after)
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
) -> FetchResult:
    attempt = 0
    while True:
        attempt += 1
        result, retry_after = _fetch_once(url, user_agent, timeout)
        result = dataclasses.replace(result, attempts=attempt)
        if result.ok or not _retryable(result) or attempt > retries:
            return result
        wait = backoff * 2 ** (attempt - 1)
        if retry_after is not None:
            wait = min(retry_after, max_retry_after)
        sleep(wait)


def _retryable(result: FetchResult) -> bool:
    if result.error in ("timeout", "connection_error"):
        return True
    return result.status is not None and (result.status >= 500 or result.status == 429)


def _fetch_once(url: str, user_agent: str, timeout: float) -> tuple[FetchResult, float | None]:
    """One GET. Returns the result and the Retry-After delay the server asked for, if any."""
    request = urllib.request.Request(_quote_url(url), headers={"User-Agent": user_agent, "Accept": "*/*"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BODY_BYTES + 1)
            content_type = response.headers.get("Content-Type", "")
            final_url = response.geturl()
            status = response.status
    except urllib.error.HTTPError as err:
        with err:  # closes the error response's socket
            reason = f"HTTP {err.code} {err.reason}".strip()
            retry_after = _parse_retry_after(err.headers.get("Retry-After") if err.headers else None)
            result = FetchResult(url, err.code, "", b"", error=f"http_{err.code}", message=reason)
        return result, retry_after
    except urllib.error.URLError as err:  # connect failures: refused, DNS, TLS, connect timeout
        code = "timeout" if isinstance(err.reason, TimeoutError) else "connection_error"
        return FetchResult(url, None, "", b"", error=code, message=str(err.reason)), None
    except TimeoutError:  # the server accepted the connection but did not answer in time
        return FetchResult(url, None, "", b"", error="timeout", message=f"no answer within {timeout:g} s"), None
    except (HTTPException, OSError) as err:  # connection dropped mid-response
        return FetchResult(url, None, "", b"", error="connection_error", message=f"{type(err).__name__}: {err}"), None
    except ValueError as err:  # urllib rejects some malformed URLs only when opening them
        return FetchResult(url, None, "", b"", error="bad_url", message=str(err)), None
    if len(body) > MAX_BODY_BYTES:
        message = f"body larger than {MAX_BODY_BYTES} bytes"
        return FetchResult(url, status, content_type, b"", error="too_large", final_url=final_url, message=message), None
    return FetchResult(url, status, content_type, body, final_url=final_url), None


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
    if meta.get("url") != url or meta.get("length") != len(body):
        return None
    return FetchResult(
        url, meta.get("status", 200), meta.get("content_type", ""), body,
        from_cache=True, final_url=meta.get("final_url", url),
    )


def _cache_write(cache_dir: str, result: FetchResult) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    body_path, meta_path = _cache_paths(cache_dir, result.url)
    meta = {
        "url": result.url,
        "final_url": result.final_url,
        "status": result.status,
        "content_type": result.content_type,
        "length": len(result.body),
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Body first, sidecar last: the sidecar's presence is what makes an entry count.
    _atomic_write(body_path, result.body)
    _atomic_write(meta_path, json.dumps(meta, indent=1).encode("utf-8"))


def _atomic_write(path: str, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename, so readers (other workers,
    a later run after a crash) see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    base_url = urljoin(page_url, base) if base else page_url
    links: list[str] = []
    seen: set[str] = set()
    for href in hrefs:
        link = urldefrag(urljoin(base_url, href.strip()))[0]  # the parser unescaped it
        if urlsplit(link).scheme.lower() in ("http", "https") and _is_abc_url(link) and link not in seen:
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
    if err == "bad_url":
        return f"{result.url}{found} is not a valid http(s) URL ({result.message}); fix or remove it"
    if err == "timeout":
        return (f"GET {result.url}{found}: no response within {timeout:g} s after {tries}; "
                "the server is slow or down: try later or raise the timeout")
    if err == "connection_error":
        return (f"GET {result.url}{found}: could not connect or the connection dropped "
                f"({result.message}) after {tries}; check the host name and network, or try later")
    if err == "too_large":
        return f"GET {result.url}{found}: {result.message}, too big to be an ABC file; skipped"
    if result.status == 404 or result.status == 410:
        return f"GET {result.url}{found} returned {result.message} after {tries}: the file is gone; fix or remove the URL"
    if result.status is not None and (result.status >= 500 or result.status == 429):
        return (f"GET {result.url}{found} returned {result.message} on all {tries}: "
                "the server is failing or busy; re-run later (successful fetches are cached)")
    return f"GET {result.url}{found} returned {result.message} after {tries}; check the URL or access rights"


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
            result = fetch(url, **self._settings)
            if not result.from_cache and result.attempts:
                last_request = time.monotonic()
            _count("cache_hit" if result.from_cache else "fetched_from_network")
            _count("requests", result.attempts)
            yield from self._outputs(host, url, referrer, result)

    def _outputs(self, host: str, url: str, referrer: str | None, result: FetchResult) -> Iterator:
        if not result.ok:
            yield self._reject(host, url, result.error or "fetch_failed",
                               _describe_failure(result, self._settings["timeout"], referrer))
            return
        if looks_binary(result.body):
            yield self._reject(host, url, "binary", self._not_abc_detail(result, referrer, "binary data"))
            return
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
                   "encoding": decode_text(result.body)[1]}
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
        return f"GET {result.url}{found} returned HTTP {result.status}{cached} but {what}; not a tune source"

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

          {"source": url, "collection": host, "text": str, "encoding": "utf-8" | "latin-1"}

      where ``host`` is ``host_of(url)`` and ``text`` is the ``.abc`` file's text, or a page's
      ABC ``<pre>`` blocks (or its ABC-bearing text) joined by blank lines;
    * ``rejects``: rows of ``schemas.tables.REJECTS`` with stage ``"fetch"`` and reason
      ``http_<status>``, ``timeout``, ``connection_error``, ``not_abc``, ``binary``, ``bad_url``
      or ``too_large``.

    Every input URL and every followed link ends in exactly one document or one reject, except
    HTML pages that hold only ``.abc`` links (counted as ``index_page``). Counters in namespace
    ``scrape``: one per reject reason, plus ``document``, ``index_page``, ``link_found``,
    ``cache_hit`` and ``fetched_from_network``.

    Politeness: URLs are keyed by (host, shard), shard in ``range(per_host_concurrency)``; each
    key's URLs are fetched one at a time in sorted order, ``delay`` seconds apart, with the
    project's User-Agent. With ``cache_dir`` every 200 response is kept on disk and never fetched
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
        timeout: float = 20,
        retries: int = 3,
        backoff: float = 1.0,
        delay: float = 1.0,
        per_host_concurrency: int = 1,
        follow_links: bool = True,
        refresh: bool = False,
    ) -> None:
        super().__init__()
        if per_host_concurrency < 1:
            raise ValueError("per_host_concurrency must be at least 1")
        self._settings = {
            "cache_dir": cache_dir, "user_agent": user_agent, "timeout": timeout,
            "retries": retries, "backoff": backoff, "refresh": refresh,
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
