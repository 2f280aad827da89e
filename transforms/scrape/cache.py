"""The scraper's response cache on disk: ``<sha256 of URL>.body`` plus ``<sha256 of URL>.json``.

Only complete 200 responses are stored (``client.fetch`` decides); an entry is trusted only when
its sidecar has the current ``CACHE_FORMAT``, names the same URL and the body's length.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone

from folkrnn.schemas.files import atomic_write

# Bumped when what a cache entry promises changes. Format 2: bodies are complete (never cut short
# by a timeout or a closed connection) and came from the URL's own host unless --follow-offsite.
# Entries of older formats may hold truncated or off-host bodies, so they are fetched again once.
CACHE_FORMAT = 2


def _paths(cache_dir: str, url: str) -> tuple[str, str]:
    stem = os.path.join(cache_dir, hashlib.sha256(url.encode("utf-8")).hexdigest())
    return stem + ".body", stem + ".json"


def load(cache_dir: str, url: str) -> tuple[dict, bytes] | None:
    """The (metadata, body) kept for ``url``, or None when there is no trusted entry."""
    body_path, meta_path = _paths(cache_dir, url)
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
    return meta, body


def store(cache_dir: str, url: str, body: bytes, *, final_url: str, status: int, content_type: str) -> None:
    """Keep one response: the body first, its sidecar last (the sidecar makes the entry count)."""
    os.makedirs(cache_dir, exist_ok=True)
    body_path, meta_path = _paths(cache_dir, url)
    meta = {
        "format": CACHE_FORMAT,
        "url": url,
        "final_url": final_url,
        "status": status,
        "content_type": content_type,
        "length": len(body),
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(body_path, body)
    atomic_write(meta_path, json.dumps(meta, indent=1))
