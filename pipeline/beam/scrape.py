"""``ScrapeAbc``: the Beam transform that fetches a PCollection of URLs politely (one host is
fetched sequentially, with a delay between requests) and follows pages' ``.abc`` links once.

A thin wrapper over ``transforms.scrape`` (fetching, the response cache, finding ABC): here are
only the grouping by host, the politeness delay, the reject rows and the ``scrape`` counters.
Every failure is a row of the rejects table (``folkrnn.schemas.tables.REJECTS``) with stage ``fetch``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from folkrnn.transforms.records import decode_text, looks_binary, reject_row
from folkrnn.transforms.scrape import (
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    FetchResult,
    extract_abc,
    fetch,
    host_of,
    media_type,
)

STAGE = "fetch"
# How much of a non-ABC body a reject row keeps in ``raw``, enough to see what the page was.
RAW_SNIPPET_CHARS = 2000


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
            what = f"no ABC (no X:/K: lines) in {media_type(result.content_type) or 'untyped'} content"
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
    * ``rejects``: rows of ``folkrnn.schemas.tables.REJECTS`` with stage ``"fetch"`` and reason
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
