"""The package's layers only look down: schemas <- transforms <- model <- pipeline.

Every import in every module (at the top or inside a function) is read with ``ast``; an import of
a higher layer fails the test, and so does any import of Apache Beam below ``pipeline/`` (the Beam
wrappers live in ``pipeline/beam/``; pure code stays importable, and fast, without Beam).
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("schemas", "transforms", "model", "pipeline")  # each may import only those before it
BEAM_FREE = ("schemas", "transforms", "model")
GENERIC = set(LAYERS)  # never imported without the folkrnn. prefix
# The one use of Beam below pipeline/: its filesystems as an I/O library for gs:// paths, imported
# lazily by the module every file operation goes through (local work never imports Beam).
BEAM_IO_GATEWAY = ("schemas/files.py", "apache_beam.io.filesystems")


def modules() -> list[tuple[str, str]]:
    """(layer, path) of every Python file of the package."""
    found = []
    for layer in LAYERS:
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, layer)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            found += [(layer, os.path.join(dirpath, f)) for f in sorted(files) if f.endswith(".py")]
    return found


def imported_names(path: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports would hide the layer; the package uses none
                names.append((node.lineno, "." * node.level + (node.module or "")))
            else:
                names.append((node.lineno, node.module or ""))
    return names


def test_the_walk_sees_the_whole_package():
    layers = {layer for layer, _ in modules()}
    assert layers == set(LAYERS) and len(modules()) > 50


@pytest.mark.parametrize("layer, path", modules(), ids=lambda v: os.path.relpath(v, ROOT) if "/" in str(v) else v)
def test_imports_only_look_down(layer: str, path: str):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    wrong = []
    for line, name in imported_names(path):
        top = name.split(".")
        if name.startswith("."):
            wrong.append(f"line {line}: relative import {name} (write folkrnn.<layer>...)")
        elif top[0] in GENERIC:
            wrong.append(f"line {line}: {name} without the folkrnn. prefix")
        elif top[0] == "folkrnn" and len(top) > 1 and top[1] not in allowed:
            wrong.append(f"line {line}: {name} is in a higher layer than {layer}")
        elif (os.path.relpath(path, ROOT), name) == BEAM_IO_GATEWAY:
            continue
        elif top[0] == "apache_beam" and layer in BEAM_FREE:
            wrong.append(f"line {line}: {name} (Beam belongs in pipeline/beam/)")
    assert not wrong, f"{os.path.relpath(path, ROOT)}: " + "; ".join(wrong)


def test_a_violation_is_caught(tmp_path):
    """The checker itself: an upward import and a Beam import in a lower layer are both seen."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from folkrnn.schemas.errors import UsageError\n    import apache_beam as beam\n")
    assert imported_names(str(bad)) == [(2, "folkrnn.schemas.errors"), (3, "apache_beam")]


# Commands that sit over others: demo runs them all in turn; serve (pipeline/serve/) composes with
# generate's prime checks (build_prime ...) and plays with play's renderer, one tune at a time, so
# that its tunes are exactly those commands' (until those functions move to helper modules).
SITS_OVER = {"demo": None, "serve": {"generate", "play"}}  # None: any command


def command_files(command: str) -> list[str]:
    """A command's module: pipeline/CMD.py, or every module of the package pipeline/CMD/."""
    folder = os.path.join(ROOT, "pipeline", command)
    if os.path.isdir(folder):
        return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py")]
    return [folder + ".py"]


def test_commands_share_helpers_not_each_other():
    """A command module (``folkrnn ingest`` -> pipeline/ingest.py ...) never imports another one:
    what two commands share lives in a helper module (datasets, outputs, beam/ ...). ``demo`` is
    the exception that proves it: it runs the other commands in turn (and ``serve``: SITS_OVER)."""
    from folkrnn.pipeline.cli import COMMANDS

    commands = {name.removeprefix("folkrnn.pipeline.") for name in COMMANDS.values()}
    wrong = []
    for command in sorted(commands):
        allowed = SITS_OVER.get(command, set())
        if allowed is None:
            continue
        for path in command_files(command):
            for line, name in imported_names(path):
                other = name.removeprefix("folkrnn.pipeline.")
                if (name.startswith("folkrnn.pipeline.") and other in commands and other != command
                        and other not in allowed):
                    wrong.append(f"{os.path.relpath(path, ROOT)} line {line} imports the command {other}")
    assert not wrong, "; ".join(wrong)
