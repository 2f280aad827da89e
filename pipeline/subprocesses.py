"""External tools (abcm2ps, ghostscript, abc2midi) run so that they die with the process that
started them, and fail with one line saying what went wrong.

A kill -9 of ``folkrnn compile`` runs no cleanup, so without this its pool workers and their tools
would run on under PID 1 and write into the output folder.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The Debian package of each external tool (the Makefile's sysdeps installs them).
DEBIAN_PACKAGES = {"abcm2ps": "abcm2ps", "abc2midi": "abcmidi", "gs": "ghostscript", "pdftotext": "poppler-utils",
                   "fluidsynth": "fluidsynth", "sox": "sox"}


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


# util-linux's setpriv sets the parent-death signal and then runs the tool (see ``run_tool``).
_SETPRIV = shutil.which("setpriv") if _PRCTL is not None else None


def run_tool(command: list[str], timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` to its end, its output captured as text; a missing tool or a timeout is a
    RuntimeError. The tool dies with this process (see ``die_with_parent``).

    The tool starts through util-linux's ``setpriv --pdeathsig KILL``, so no Python runs in the
    child and Python starts it with vfork: no fork handlers run in the child (gRPC's, loaded with
    Beam in the same process, can abort a forked child), and in a process the size of a compile
    worker a start costs about 5 ms instead of 35 (a fork copying its page tables). The price: a
    kill in the instant between the start and setpriv's prctl leaves that one run to finish on its
    own. Without setpriv, a preexec function sets the signal.
    """
    parent = os.getpid()
    preexec = (lambda: die_with_parent(parent)) if _PRCTL is not None else None
    if _SETPRIV is not None:
        require_tools(command[0])  # setpriv would report a missing tool as its own failure
        command, preexec = [_SETPRIV, "--pdeathsig", "KILL", "--", *command], None
    try:
        # The signal is sent when the thread that started the tool ends; this thread waits for
        # the tool, so it outlives it.
        return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout, cwd=cwd,
                              preexec_fn=preexec)
    except FileNotFoundError:
        raise RuntimeError(missing_tools_text([command[0]])) from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{command[0]} took longer than {timeout:.0f} s and was stopped") from None


def missing_tools_text(tools: list[str]) -> str:
    """``abc2midi is not installed (apt-get install abcmidi)``: the tools and their Debian packages."""
    packages = " ".join(dict.fromkeys(DEBIAN_PACKAGES.get(t, t) for t in tools))
    verb = "is" if len(tools) == 1 else "are"
    return f"{', '.join(tools)} {verb} not installed (apt-get install {packages})"


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def require_tools(*tools: str) -> None:
    """A RuntimeError naming the tools that are not on the PATH and the Debian packages that have them."""
    missing = missing_tools(*tools)
    if missing:
        raise RuntimeError(missing_tools_text(missing))
