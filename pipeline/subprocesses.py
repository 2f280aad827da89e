"""External tools (abcm2ps, ghostscript, abc2midi) run so that they die with the process that
started them, and fail with one line saying what went wrong.

A kill -9 of ``folkrnn compile`` runs no cleanup, so without this its pool workers and their tools
would run on under PID 1 and write into the output folder.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here, not in the forked child: a preexec function should do as little as it can.
_PRCTL = _load_prctl()


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` (the pid that started it) dies.

    Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op. If the parent is already gone (it
    died between the fork and this call, so the signal will never come), the process ends itself
    at once.
    """
    if _PRCTL is None:
        return
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def run_tool(command: list[str], timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` to its end, its output captured as text; a missing tool or a timeout is a
    RuntimeError. The tool dies with this process (see ``die_with_parent``)."""
    parent = os.getpid()
    try:
        # The signal is sent when the thread that started the tool ends; this thread waits for
        # the tool, so it outlives it.
        return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout, cwd=cwd,
                              preexec_fn=(lambda: die_with_parent(parent)) if _PRCTL is not None else None)
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} is not installed (apt-get install abcm2ps abcmidi ghostscript)") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{command[0]} took longer than {timeout:.0f} s and was stopped") from None
