"""One way to write a file: a temporary name readers ignore, fsync, rename.

Dataset readers (Arrow, DuckDB, our own) skip names starting with ``.`` or ``_``, so a temporary
file never sits where a reader would take it for a shard. Local paths get ``fsync`` and
``os.replace``; other Beam filesystems (``gs://``) get their own create and rename.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from typing import BinaryIO


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def temporary_name(path: str) -> str:
    """A unique sibling name for ``path`` that dataset readers skip (dot-prefixed)."""
    head, tail = os.path.split(path) if _is_local(path) else path.rsplit("/", 1)
    name = f".{tail}.{uuid.uuid4().hex[:12]}.tmp"
    return os.path.join(head, name) if _is_local(path) else f"{head}/{name}"


def atomic_write(path: str, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, text as UTF-8, or a function writing to a binary handle) to ``path``.

    Readers see the old file or the new one, never half of either. A failure removes the
    temporary file and re-raises the real cause as an OSError naming ``path``: a failed write or
    fsync (a full disk) carries no file name, and a failed temporary file names only the temporary.
    """
    try:
        _atomic_write(path, data)
    except OSError as err:
        if err.errno is None or err.filename == path:
            raise
        raise OSError(err.errno, err.strerror or str(err), path) from err


def _atomic_write(path: str, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if _is_local(path):
        local = path[len("file://"):] if path.startswith("file://") else path
        directory = os.path.dirname(os.path.abspath(local))
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(local)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                if callable(data):
                    data(handle)
                else:
                    handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; keep the usual mode
            os.replace(temporary, local)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        return
    from apache_beam.io.filesystems import FileSystems

    temporary = temporary_name(path)
    try:
        with FileSystems.create(temporary) as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([temporary], [path])
    except BaseException:
        try:
            if FileSystems.exists(temporary):
                FileSystems.delete([temporary])
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        raise


