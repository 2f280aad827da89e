"""One way to write a file: a temporary name readers ignore, fsync, rename; and the few file
operations that must work on local paths and on object stores alike.

Dataset readers (Arrow, DuckDB, our own) skip names starting with ``.`` or ``_``, so a temporary
file never sits where a reader would take it for a shard. Local paths get ``fsync`` and
``os.replace``; other filesystems (``gs://``) go through Beam's ``FileSystems``, imported only for
such a path: this module is the one place below ``pipeline/`` that touches Beam, as an I/O library
(tests/test_layers.py allows exactly this), so local work never pays for importing it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import BinaryIO

from folkrnn.schemas.errors import UsageError, setting


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def is_local(path: str) -> bool:
    """A path of this machine's filesystem (``file://`` included), not of an object store (``gs://``)."""
    return _is_local(path)


def local_path(path: str) -> str:
    """A local path without its ``file://``, for ``os`` and ``open``."""
    return _local_path(path)


def _filesystems():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def join(base: str, *parts: str) -> str:
    """``base/part/...`` on any filesystem."""
    return os.path.join(base, *parts) if _is_local(base) else _filesystems().join(base, *parts)


def exists(path: str) -> bool:
    return os.path.exists(_local_path(path)) if _is_local(path) else _filesystems().exists(path)


def makedirs(path: str) -> None:
    """Make a folder and its parents (object stores have none to make)."""
    if _is_local(path):
        os.makedirs(_local_path(path), exist_ok=True)
    elif not _filesystems().exists(path):
        _filesystems().mkdirs(path)


def read_bytes(path: str) -> bytes:
    if _is_local(path):
        with open(_local_path(path), "rb") as handle:
            return handle.read()
    with _filesystems().open(path) as handle:
        return handle.read()


def write_parquet(path: str, table) -> None:
    """A Parquet file (zstd), atomically; ``table`` is a pyarrow Table."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write(path, buffer.getvalue())


def write_json(path: str, value) -> None:
    """A JSON file (indent 2), atomically."""
    atomic_write(path, json.dumps(value, indent=2).encode("utf-8"))


def temporary_name(path: str) -> str:
    """A unique sibling name for ``path`` that dataset readers skip (dot-prefixed)."""
    head, tail = os.path.split(path) if _is_local(path) else path.rsplit("/", 1)
    name = f".{tail}.{uuid.uuid4().hex[:12]}.tmp"
    return os.path.join(head, name) if _is_local(path) else f"{head}/{name}"


def atomic_write(path: str, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, text as UTF-8, or a function writing to a binary handle) to ``path``.

    Readers see the old file or the new one, never half of either; a device or pipe that exists
    at ``path`` is written in place instead. A failure removes the
    temporary file and re-raises the real cause as an OSError naming ``path``: a failed write or
    fsync (a full disk) carries no file name, and a failed temporary file names only the temporary.
    """
    try:
        _atomic_write(path, data)
    except OSError as err:
        if err.errno is None or err.filename == path:
            raise
        raise OSError(err.errno, err.strerror or str(err), path) from err


def _write_to(handle: BinaryIO, data: bytes | Callable[[BinaryIO], None]) -> None:
    if callable(data):
        data(handle)
    else:
        handle.write(data)


def _atomic_write(path: str, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if _is_local(path):
        local = _local_path(path)
        if os.path.exists(local) and not stat.S_ISREG(os.stat(local).st_mode):
            # A device or a pipe (/dev/stdout, /dev/full, a fifo): written in place, since a rename
            # would replace the device node itself (as root).
            with open(local, "wb") as handle:
                _write_to(handle, data)
            return
        directory = os.path.dirname(os.path.abspath(local))
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(local)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                _write_to(handle, data)
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
    FileSystems = _filesystems()  # noqa: N806 - Beam's class, named as Beam names it
    temporary = temporary_name(path)
    try:
        with FileSystems.create(temporary) as handle:
            _write_to(handle, data)
        _replace(FileSystems, temporary, path)
    except BaseException:
        try:
            if FileSystems.exists(temporary):
                FileSystems.delete([temporary])
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        raise


def _replace(FileSystems, temporary: str, path: str) -> None:  # noqa: N803 - Beam's class
    """Rename ``temporary`` over ``path``. On an object store (gs://) a rename is a copy, which replaces
    the object whole: a reader sees the old shard or the new one, never none. A filesystem whose
    rename refuses an existing target (HDFS) gets the old file deleted first."""
    try:
        FileSystems.rename([temporary], [path])
    except Exception:
        if not FileSystems.exists(path) or not FileSystems.exists(temporary):
            raise
        FileSystems.delete([path])
        FileSystems.rename([temporary], [path])


@contextlib.contextmanager
def folder_lock(path: str, command: str) -> Iterator[None]:
    """Hold an exclusive lock on the output folder ``path`` (made if missing) for the block.

    flock of the folder itself: no lock file is left behind, and the kernel drops the lock when
    the process ends, kill -9 included. Other filesystems (gs://) and non-POSIX systems: no lock.
    A second ``folkrnn COMMAND`` on the same folder gets a UsageError.
    """
    makedirs(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    if fcntl is None or not _is_local(path):
        yield
        return
    fd = os.open(_local_path(path), os.O_RDONLY)  # not inherited by workers or tools (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another folkrnn {command} is writing to {path}: wait for it to end or give "
                             f"another {setting('out')}") from None
        yield
    finally:
        os.close(fd)
