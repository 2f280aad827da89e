"""Scraping ABC tunes over HTTP(S): plain ``.abc`` files and HTML pages that show or link to ABC.

Pure functions, no Beam (``folkrnn.pipeline.beam.scrape.ScrapeAbc`` runs them on a runner):

* ``client``: ``fetch``, a polite GET with retries, a wall-clock deadline per attempt,
  redirects followed only to http(s) on the same host, and ``cache``, an on-disk cache of
  complete responses;
* ``extract``: ``extract_abc``, the ABC texts and ``.abc`` links in a response;
* ``urls``: ``host_of``, ``url_problem`` and ``read_url_list``.
"""

from folkrnn.transforms.scrape.cache import CACHE_FORMAT
from folkrnn.transforms.scrape.client import (
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    MAX_BODY_BYTES,
    MAX_REDIRECTS,
    MAX_RETRY_AFTER,
    FetchResult,
    fetch,
)
from folkrnn.transforms.scrape.extract import extract_abc, media_type
from folkrnn.transforms.scrape.urls import BAD_URL_COLLECTION, host_of, read_url_list, url_problem

__all__ = [
    "BAD_URL_COLLECTION", "CACHE_FORMAT", "DEFAULT_TIMEOUT", "DEFAULT_USER_AGENT", "MAX_BODY_BYTES",
    "MAX_REDIRECTS", "MAX_RETRY_AFTER", "FetchResult", "extract_abc", "fetch", "host_of", "media_type",
    "read_url_list", "url_problem",
]
