"""Fetching over HTTP(S) with urllib3: polite GETs, retried, under a deadline, redirects by policy.

urllib3 does the HTTP: connections, percent-encoding of hand-written URLs, chunked bodies, the
check that a body is as long as its Content-Length (``enforce_content_length``), and the retry
policy (``urllib3.util.Retry``: which statuses are retried, how many times, ``Retry-After`` read
and capped). Three things stay here, because urllib3 has no way to say them:

* the attempt loop: urllib3 retries inside ``urlopen``, but an attempt here spans every redirect
  hop and the whole streamed body, and each attempt has its own deadline;
* the deadline: urllib3's timeouts bound each socket operation, not their sum, so a server
  sending a byte a second never trips them; a timer shuts the attempt's sockets down instead;
* redirects: urllib3 follows any http(s) Location, and drops nothing about other hosts, so it
  gets ``redirect=False`` and ``_redirect_refusal`` decides (http(s) only, same host and port
  unless ``follow_offsite``, at most ``MAX_REDIRECTS``).
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, IncompleteRead
from typing import NamedTuple
from urllib.parse import urldefrag, urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError, InvalidHeader, MaxRetryError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import BaseHTTPResponse
from urllib3.util import Retry, parse_url

from folkrnn.transforms.scrape import cache
from folkrnn.transforms.scrape.urls import host_of, url_problem

DEFAULT_USER_AGENT = "folkrnn/0.1 (+https://github.com/folkrnn/folkrnn; ABC tune ingest)"
# Seconds one attempt may take in all: connect, redirects, headers and body (``--timeout``).
DEFAULT_TIMEOUT = 30.0
# Redirects followed per attempt; more is a loop or a maze, and becomes a too_many_redirects reject.
MAX_REDIRECTS = 5
# A server may ask for a long pause in Retry-After; waiting more than this stalls a whole host's
# queue, so longer requests are cut to the cap (the retry may then fail and become a reject).
MAX_RETRY_AFTER = 60.0
# Tune collections are small; a body larger than this is not an ABC file and would only eat memory.
MAX_BODY_BYTES = 50 * 1024 * 1024
# Server trouble that may pass; any other 4xx is final: asking again would get the same answer.
RETRY_STATUSES = frozenset({429, *range(500, 600)})
# Failures without a status that may pass too.
RETRY_ERRORS = frozenset({"timeout", "connection_error", "truncated"})
_READ_CHUNK = 64 * 1024


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


def _failure(url: str, status: int | None, error: str, message: str, final_url: str = "") -> FetchResult:
    return FetchResult(url, status, "", b"", error=error, final_url=final_url, message=message)


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
    ``Retry-After`` asks up to ``max_retry_after``. Other 4xx are final. Only complete 200
    responses are cached, so failures are tried again on the next run; a cached URL is not
    requested again unless ``refresh`` is set.
    """
    url = url.strip()
    problem = url_problem(url)
    if problem:
        return _failure(url, None, "bad_url", problem)
    if cache_dir and not refresh:
        cached = cache.load(cache_dir, url)
        if cached is not None:
            meta, body = cached
            result = FetchResult(url, meta.get("status", 200), meta.get("content_type", ""), body,
                                 from_cache=True, final_url=meta.get("final_url", url))
            return _apply_redirect_policy(result, follow_offsite)
    policy = _RetryPolicy(total=retries, redirect=False, status_forcelist=RETRY_STATUSES,
                          backoff_factor=backoff, retry_after_max=max_retry_after)
    result = _fetch_with_retries(url, user_agent, timeout, follow_offsite, policy, sleep)
    if cache_dir and result.ok and result.status == 200:
        cache.store(cache_dir, url, result.body, final_url=result.final_url, status=result.status,
                    content_type=result.content_type)
    return result


class _RetryPolicy(Retry):
    """urllib3's retry policy, with the project's backoff: ``backoff * 2**(n-1)`` before retry n.
    (urllib3 retries the first time at once; a busy host gets a pause here every time.)"""

    def get_backoff_time(self) -> float:
        return self.backoff_factor * 2 ** (len(self.history) - 1)

    def wait(self, response: BaseHTTPResponse | None) -> float:
        """Seconds to wait before the next attempt: what Retry-After asks (capped), else the backoff."""
        try:
            retry_after = self.get_retry_after(response) if response is not None else None
        except InvalidHeader:  # neither seconds nor an HTTP date: ignored
            retry_after = None
        return self.get_backoff_time() if retry_after is None else retry_after


def _fetch_with_retries(
    url: str, user_agent: str, timeout: float, follow_offsite: bool, policy: _RetryPolicy,
    sleep: Callable[[float], None],
) -> FetchResult:
    while True:
        result, response = _fetch_once(url, user_agent, timeout, follow_offsite)
        result = dataclasses.replace(result, attempts=len(policy.history) + 1)
        retryable = result.error in RETRY_ERRORS or (
            result.status is not None and policy.is_retry("GET", result.status))
        if result.ok or not retryable:
            return result
        try:
            policy = policy.increment("GET", url, response=response)
        except MaxRetryError:
            return result
        sleep(policy.wait(response))


# --------------------------------------------------------------------------------------------
# One attempt: a deadline over all of it, redirects decided here rather than by urllib3
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


class _Watched:
    """A urllib3 connection that hands its socket to the attempt's deadline once connected."""

    def __init__(self, *args, deadline: _Deadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _pool_manager(url: str, deadline: _Deadline) -> urllib3.PoolManager:
    """A pool manager for one GET of ``url`` whose connections ``deadline`` watches (the pools
    pass ``deadline`` on to the connections they make). Through the proxy the environment names
    for ``url`` (``http_proxy``, ``https_proxy``, ``no_proxy``, read as urllib reads them), if any."""
    target = parse_url(url)
    proxy = urllib.request.getproxies().get(target.scheme or "")
    if proxy and not urllib.request.proxy_bypass(target.netloc or ""):
        manager: urllib3.PoolManager = urllib3.ProxyManager(proxy)
    else:
        manager = urllib3.PoolManager()
    manager.pool_classes_by_scheme = {
        "http": functools.partial(_WatchedHTTPPool, deadline=deadline),
        "https": functools.partial(_WatchedHTTPSPool, deadline=deadline),
    }
    return manager


class _Unusable(Exception):
    """A response whose body is not kept: ``reason`` is the reject reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Redirect(NamedTuple):
    status: int
    location: str


_Outcome = tuple[FetchResult, BaseHTTPResponse | None]  # a result, and the error response if any


def _fetch_once(url: str, user_agent: str, timeout: float, follow_offsite: bool) -> _Outcome:
    """One attempt, redirects included. Returns the result and, for an HTTP error, the response
    (its Retry-After header says how long to wait before the next attempt)."""
    current = url
    with _Deadline(timeout) as deadline:
        for _ in range(MAX_REDIRECTS + 1):
            outcome = _get(url, current, user_agent, deadline)
            if not isinstance(outcome, _Redirect):
                return outcome
            current = _resolve_location(current, outcome.location)
            refused = _redirect_refusal(url, current, follow_offsite)
            if refused:
                return _failure(url, outcome.status, *refused, final_url=current), None
    return _failure(url, outcome.status, "too_many_redirects", f"more than {MAX_REDIRECTS} redirects", current), None


def _get(url: str, current: str, user_agent: str, deadline: _Deadline) -> _Outcome | _Redirect:
    """One GET of ``current`` (``url`` after the redirects so far): a result, or where to go next."""
    try:
        with _pool_manager(current, deadline) as http, http.urlopen(
            "GET", current, headers={"User-Agent": user_agent, "Accept": "*/*"},
            redirect=False, retries=False, preload_content=False,
            decode_content=False,  # the bytes as sent, as they are cached
            timeout=deadline.remaining(),
        ) as response:
            return _answer(url, current, response, deadline)
    except (HTTPError, HTTPException, OSError, ValueError, _Unusable) as err:
        return _failure(url, None, *_classify(err, deadline), final_url=current), None


def _answer(url: str, current: str, response: BaseHTTPResponse, deadline: _Deadline) -> _Outcome | _Redirect:
    location = response.get_redirect_location()
    if location:
        return _Redirect(response.status, location)
    if not 200 <= response.status < 300:
        message = f"HTTP {response.status} {response.reason or ''}".strip()
        return _failure(url, response.status, f"http_{response.status}", message, current), response
    body = _read_body(response)
    if deadline.expired:  # the watchdog may have ended the body early: what came is not kept
        raise TimeoutError
    return FetchResult(url, response.status, response.headers.get("Content-Type", ""), body, final_url=current), None


def _read_body(response: BaseHTTPResponse) -> bytes:
    """The whole body, or ``_Unusable``: too large, or cut short (urllib3 notices a body shorter
    than its Content-Length, or a chunked body without its last chunk)."""
    declared = response.length_remaining  # Content-Length as sent; None when chunked or absent
    if declared is not None and declared > MAX_BODY_BYTES:
        raise _Unusable("too_large", f"body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        # read1 makes one system call at a time, so a shutdown by the deadline is seen at once.
        while chunk := response.read1(_READ_CHUNK):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _Unusable("too_large", f"body larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except ProtocolError as err:
        if not any(isinstance(arg, IncompleteRead) for arg in err.args):
            raise  # the connection broke: a connection_error
        of = f" of {declared} bytes (Content-Length)" if declared is not None else " bytes, mid-chunk"
        raise _Unusable("truncated", f"the body ended after {size}{of}") from err
    return b"".join(chunks)


def _classify(err: BaseException, deadline: _Deadline) -> tuple[str, str]:
    """A failed GET as (reason code, message). The deadline is checked first: whatever its
    shutdown made the reader see (end of data, a reset, a TLS error), the cause was time."""
    # urllib3 counts a refused connection as a connect timeout (NewConnectionError subclasses it).
    timed_out = isinstance(err, (TimeoutError, Urllib3Timeout)) and not isinstance(err, NewConnectionError)
    if deadline.expired or timed_out:
        return "timeout", f"no complete response within {deadline.seconds:g} s"
    if isinstance(err, _Unusable):
        return err.reason, str(err)
    if isinstance(err, ValueError):  # urllib3 and IDNA refuse some URLs only when opening them
        return "bad_url", str(err)
    # What went wrong below urllib3's wrapper (ProtocolError("Connection aborted.", reset), ...).
    inner = err.__cause__ or next((arg for arg in err.args if isinstance(arg, BaseException)), err)
    if isinstance(err, NewConnectionError):  # refused, DNS
        return "connection_error", str(inner)
    return "connection_error", f"{type(inner).__name__}: {inner}"  # TLS, or dropped mid-response


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
