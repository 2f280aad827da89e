"""The installed package: one ``folkrnn`` package, nothing generic at the top of site-packages.

The wheel is built from this tree (offline: the test extra's setuptools, no build isolation),
installed into a fresh virtualenv that borrows only the third-party libraries of the running one,
and used there as a user would: ``folkrnn --help`` and a small ingest.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import venv
import zipfile

import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("pipeline", "transforms", "model", "schemas")


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the tree, so no build/ folder of an earlier build can slip stale files into the wheel.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "out", "build", "*.egg-info", "__pycache__", ".*cache", ".hypothesis"))
    done = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
               str(source), cwd=str(out))
    assert done.returncode == 0, done.stderr
    (path,) = glob.glob(str(out / "folkrnn-*.whl"))
    return path


def test_the_wheel_holds_the_whole_package_under_folkrnn(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"folkrnn"}
    sources = {os.path.relpath(p, ROOT) for folder in FOLDERS
               for p in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)}
    assert sources and {f"folkrnn/{p}" for p in sources} <= set(names), "a subpackage is missing from pyproject"
    assert {"folkrnn/model/demo.pt", "folkrnn/model/base.pt", "folkrnn/model/MODEL.md"} <= set(names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> str:
    """A fresh virtualenv with the wheel, borrowing third-party libraries from this one (offline)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    # A plain path line: the running env's libraries, but not its .pth hooks (the editable folkrnn).
    ours = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "torch")))
    with open(os.path.join(site, "borrowed.pth"), "w", encoding="utf-8") as handle:
        handle.write(ours + "\n")
    done = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    assert done.returncode == 0, done.stderr
    return str(env_dir)


def test_no_generic_module_is_importable_from_the_installed_wheel(installed, tmp_path):
    python = os.path.join(installed, "bin", "python")
    code = ("import importlib.util, folkrnn.model.network, folkrnn.pipeline.cli;"
            "print(folkrnn.model.network.__file__);"
            f"print([m for m in {FOLDERS!r} if importlib.util.find_spec(m)])")
    done = run(python, "-c", code, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    where, generic = done.stdout.splitlines()
    assert where.startswith(installed) and generic == "[]"


def test_the_installed_command_works(installed, tmp_path, fixtures_dir):
    folkrnn = os.path.join(installed, "bin", "folkrnn")
    done = run(folkrnn, "--help", cwd=str(tmp_path))
    assert done.returncode == 0 and "ingest" in done.stdout, done.stderr
    done = run(folkrnn, "ingest", os.path.join(fixtures_dir, "collection.abc"), "--out", str(tmp_path / "out"),
               "--quiet", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    tunes = pq.read_table(str(tmp_path / "out" / "tunes"))
    assert tunes.num_rows > 0 and "ingest:" in done.stdout
