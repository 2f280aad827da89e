"""Reports that commands write beside their output: ``--json FILE`` (checked before any work, written
atomically, or in place into a device or pipe such as /dev/stdout)."""

from __future__ import annotations

import json
import os

from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.files import atomic_write


def check_json_path(path: str) -> None:
    """A UsageError when ``--json FILE`` cannot be a file: its folder is missing or not a folder."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise UsageError(f"--json {path} is a folder: give a file name, e.g. {os.path.join(path, 'summary.json')}")
    if not os.path.exists(folder):
        raise UsageError(f"cannot write --json {path}: no folder {folder}")
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write --json {path}: {folder} is not a folder")


def write_json(path: str, value: dict) -> None:
    """The summary as JSON: atomically for a file, straight into a device or pipe (/dev/stdout)."""
    check_json_path(path)
    atomic_write(path, json.dumps(value, indent=2))
