"""Plain records that flow between ingest stages, and the helpers every source shares.

Records are plain dicts (pickle cheaply on every runner); the keys of output rows are the
field names of the schemas in ``schemas.tables``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RawTune:
    """One tune's text as a source found it, before any parsing."""

    source: str  # file path or URL
    collection: str  # e.g. "oneills1850", a host name, or a dump's name
    position: int  # 0-based index of the tune within its source
    text: str  # the tune: header fields and body, file-header fields already prepended
    encoding: str = "utf-8"  # or "latin-1" when the bytes were not valid UTF-8
    title: str | None = None  # from metadata columns, when the source has them
    meta: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return record_id(self.collection, self.source, self.position)


def record_id(collection: str, source: str, position: int) -> str:
    """A stable id: collection, a short hash of the source, and the position in it."""
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]
    return f"{collection}/{digest}/{position}"


def decode_text(data: bytes) -> tuple[str, str]:
    """Bytes to text: UTF-8 when valid, else latin-1 (which never fails). Returns (text, encoding)."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def looks_binary(data: bytes) -> bool:
    """True for data that is not text at all (NUL bytes or many control characters)."""
    head = data[:4096]
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return bool(head) and controls / len(head) > 0.05


def reject_row(
    *, collection: str, source: str, position: int, stage: str, reason: str, detail: str, raw: str = ""
) -> dict:
    """A row of the rejects table (folkrnn.schemas.tables.REJECTS)."""
    return {
        "id": record_id(collection, source, position),
        "source": source,
        "collection": collection,
        "position": position,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "raw": raw,
    }
