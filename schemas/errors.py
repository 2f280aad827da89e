"""Errors a user can fix, defined at the bottom layer so every layer may raise them.

The CLI prints them as one line, never a traceback. A message names a setting with ``setting(name)``,
never a command-line flag: the Python API shows the parameter (``valid_fraction``), the CLI maps it
to its flag (``--valid-fraction``).
"""

from __future__ import annotations

from collections.abc import Callable

_MARK = "\x1f"  # (ASCII unit separator) around a setting's name inside a message


def setting(name: str) -> str:
    """A setting's name inside a UsageError message (``setting("valid_fraction")``)."""
    return f"{_MARK}{name}{_MARK}"


class UsageError(Exception):
    """A mistake in how a command was called or in its inputs; the message says how to fix it."""

    def render(self, flag_of: Callable[[str], str] | None = None) -> str:
        """The message, each ``setting(name)`` shown as ``flag_of(name)`` (default: the name itself)."""
        parts = super().__str__().split(_MARK)
        return "".join(flag_of(part) if i % 2 and flag_of else part for i, part in enumerate(parts))

    def __str__(self) -> str:
        return self.render()


def describe_os_error(err: OSError) -> str:
    """One line naming the path and the cause of an I/O failure (permission, no space, ...)."""
    import errno
    import os

    err = _innermost_os_error(err)
    cause = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
    hint = {
        errno.EACCES: "choose a folder you can write to, or fix its permissions",
        errno.EPERM: "choose a folder you can write to, or fix its permissions",
        errno.EROFS: "the file system is read-only: choose another folder",
        errno.ENOSPC: "free some space or choose another disk",
        errno.EDQUOT: "free some space or choose another disk",
        errno.ENOENT: "check the path",
    }.get(err.errno or 0)
    path = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        path = f"{path} -> {err.filename2}"
    where = f"{path}: " if path else ""
    return f"{where}{cause}" + (f" ({hint})" if hint else "")


def _innermost_os_error(err: OSError) -> OSError:
    """The OSError that carries errno and path: Beam's filesystems wrap the real one in another."""
    seen: set[int] = set()
    current: BaseException | None = err
    while isinstance(current, BaseException) and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        inner = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        exceptions = getattr(current, "exception_details", None)  # Beam's BeamIOError: {path: error}
        if inner is None and isinstance(exceptions, dict) and exceptions:
            inner = next(iter(exceptions.values()))
        current = inner or current.__cause__ or current.__context__
    return err
