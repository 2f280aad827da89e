"""URLs to scrape: which host one points at, whether it can be fetched at all, and URL list files."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# The collection of a URL that has no readable host (``http://[::1/x``): its reject row goes here.
BAD_URL_COLLECTION = "bad-url"


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
