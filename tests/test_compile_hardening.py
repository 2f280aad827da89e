"""Issue 13: kill -9 of compile leaves no process behind; I/O failures are one line; no temporary
file sits where a dataset reader reads.

Real processes throughout: ``folkrnn compile`` killed while ghostscript runs, ``folkrnn validate``
under a file-size limit (RLIMIT_FSIZE binds root too, where chmod does not), /dev/full for a
full disk, and the generate writer killed by SIGXFSZ half way through a shard.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, folkrnn, folkrnn_env, start_folkrnn
from tests.test_books import generated_table, run_compile, write_dataset

ON_LINUX = sys.platform.startswith("linux")


# --- /proc ------------------------------------------------------------------------------------------
def processes() -> dict[int, dict]:
    """pid -> state, ppid, process group, comm and cmdline of every process (those that vanish skipped)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as handle:
                line = handle.read()
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        comm = line[line.index("(") + 1:line.rindex(")")]
        state, ppid, pgrp = line[line.rindex(")") + 2:].split()[:3]
        found[int(name)] = {"state": state, "ppid": int(ppid), "pgrp": int(pgrp), "comm": comm, "cmdline": cmdline}
    return found


def tree_of(root: int, marker: str) -> dict[int, dict]:
    """Live (not zombie) processes of ``root``'s tree: descendants by PPID, its process group (the
    test starts it as a session leader, and orphans keep the group), or a cmdline naming ``marker``."""
    table = processes()
    tree = {root} if root in table else set()
    grew = True
    while grew:
        more = {pid for pid, p in table.items() if p["ppid"] in tree} - tree
        tree |= more
        grew = bool(more)
    tree |= {pid for pid, p in table.items() if p["pgrp"] == root or (marker in p["cmdline"] and pid != os.getpid())}
    return {pid: table[pid] for pid in tree if pid in table and table[pid]["state"] != "Z"}


@pytest.mark.skipif(not ON_LINUX, reason="parent-death signals and /proc are Linux's")
def test_kill_9_of_compile_leaves_no_process_and_the_next_run_builds_the_volumes(tmp_path):
    data = write_dataset(str(tmp_path / "generated"), range(1, 601), shards=2)
    out = str(tmp_path / "out")
    argv = ("compile", data, "--out", out, "--per-volume", "300", "--jobs", "2", "--quiet")
    first = start_folkrnn(*argv, start_new_session=True)  # its own process group, to find (and clean up) its tree
    try:
        deadline = time.monotonic() + 90
        while not any(p["comm"] == "gs" for p in tree_of(first.pid, out).values()):
            assert first.poll() is None, f"compile ended before ghostscript started: {first.communicate()}"
            assert time.monotonic() < deadline, "no ghostscript process within 90 s"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := tree_of(first.pid, out)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"left running after kill -9: {[(p['comm'], p['cmdline'][:120]) for p in left.values()]}"
    finally:
        first.stdout.close()
        first.stderr.close()
        try:
            os.killpg(first.pid, signal.SIGKILL)  # only when the test failed: nothing of it may run on
        except (ProcessLookupError, PermissionError):
            pass
    volumes = os.path.join(out, "volumes")
    assert [n for n in os.listdir(volumes) if n.startswith(".")], "the killed run left no work folder?"

    second = folkrnn(*argv, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "2 to build" in second.stdout
    names = sorted(os.listdir(volumes))
    assert names == [f"folkrnn-volume-{k}.{ext}" for k in ("01", "02") for ext in ("abc", "pdf", "report.json")]
    for k in ("01", "02"):
        with open(os.path.join(volumes, f"folkrnn-volume-{k}.pdf"), "rb") as handle:
            assert handle.read(5) == b"%PDF-"
    corpus = os.path.join(out, "corpus")
    assert all(os.listdir(os.path.join(corpus, part)) == ["part-0.parquet"] for part in os.listdir(corpus))
    assert ds.dataset(corpus, partitioning="hive").count_rows() == 600


def test_a_second_compile_into_the_same_folder_is_refused(tmp_path):
    from folkrnn.schemas.errors import UsageError

    data = write_dataset(str(tmp_path / "generated"), range(1, 11), shards=1)
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running compile holds it
        with pytest.raises(UsageError, match="another folkrnn compile is writing to"):
            run_compile(data, "--out", str(out), "--no-pdf", "--quiet")
    finally:
        os.close(fd)
    assert run_compile(data, "--out", str(out), "--no-pdf", "--quiet") == 0


def test_compile_removes_what_a_killed_run_left(tmp_path):
    data = write_dataset(str(tmp_path / "generated"), range(1, 11), shards=1)
    out = tmp_path / "out"
    leftovers = [out / "volumes" / ".folkrnn-volume-01.pdf.0123456789ab.tmp", out / "volumes" / ".typeset-x1y2",
                 out / "volumes" / "midi" / ".midi-a1b2", out / "corpus" / "volume=1" / ".part-0.parquet.k3j4.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if "typeset" in path.name or "midi" in path.name else path.write_bytes(b"PAR1 half")
    keep = out / "volumes" / "notes.txt"
    keep.write_text("mine")
    assert run_compile(data, "--out", str(out), "--no-pdf", "--quiet") == 0
    assert not [p for p in leftovers if os.path.lexists(p)]
    assert keep.read_text() == "mine"


def test_a_pdf_that_cannot_be_written_fails_its_volume_in_one_line_and_leaves_no_temporary(tmp_path, capsys):
    """The PDF goes through atomic_write (ghostscript writes into the work folder): a PDF path that
    is a folder fails that volume with one line naming it; no work folder or temporary file stays."""
    data = write_dataset(str(tmp_path / "generated"), range(1, 11), shards=1)
    volumes = tmp_path / "out" / "volumes"
    (volumes / "folkrnn-volume-01.pdf" / "mine").mkdir(parents=True)
    assert run_compile(data, "--out", str(tmp_path / "out"), "--quiet") == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if "FAILED" in line]
    assert failed == [f"volume 1: FAILED: {volumes / 'folkrnn-volume-01.pdf'}: Is a directory"]
    assert sorted(os.listdir(volumes)) == ["folkrnn-volume-01.abc", "folkrnn-volume-01.pdf"]
    assert os.listdir(volumes / "folkrnn-volume-01.pdf") == ["mine"]


def test_a_midi_folder_is_swapped_whole_and_a_killed_swap_is_cleaned_up(tmp_path):
    from folkrnn.pipeline.books import remove_leftovers
    from folkrnn.pipeline.midi import MIDI_PREFIX, replace_folder

    midi = tmp_path / "out" / "volumes" / "midi"
    target, new = midi / "folkrnn-volume-01", midi / (MIDI_PREFIX + "new")
    for folder, names in ((target, ("tune-1.mid", "tune-2.mid")), (new, ("tune-3.mid",))):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"MThd")
    replace_folder(str(new), str(target))
    assert sorted(os.listdir(midi)) == ["folkrnn-volume-01"] and os.listdir(target) == ["tune-3.mid"]
    replace_folder(str(target), str(midi / "folkrnn-volume-02"))  # nothing there yet
    assert os.listdir(midi) == ["folkrnn-volume-02"]
    aside = midi / (MIDI_PREFIX + "replaced-0123456789ab")  # a swap killed between its renames
    aside.mkdir()
    assert remove_leftovers(str(tmp_path / "out")) == [str(aside)]
    assert os.listdir(midi) == ["folkrnn-volume-02"]


# Where a file may still be renamed into place by hand: atomic_write itself, folders swapped in
# whole (the ingest's journal, a volume's MIDI folder), and a checkpoint downloaded to read.
HAND_WRITTEN_RENAMES_ALLOWED = {
    ("schemas/files.py", "_atomic_write"),
    ("pipeline/midi.py", "replace_folder"),
    ("pipeline/run_ingest.py", "finish_commit"),
    ("model/generate.py", "local_checkpoint"),
}


def test_files_are_written_one_way():
    """Issue 14: thirteen hand-written temp+rename writes (mkstemp in some, a fixed .tmp name in
    others, fsync in some). Outside the places above, no module renames, moves or makes a
    temporary file itself: it calls atomic_write (or write_parquet, write_json)."""
    import ast

    calls = {("os", "replace"), ("os", "rename"), ("shutil", "move"), ("tempfile", "mkstemp"),
             ("tempfile", "NamedTemporaryFile")}

    def renames(node: ast.AST, rel: str, function: str) -> list[str]:
        """The calls above in ``node``, each with the function it is in (the innermost)."""
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        found = []
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in calls and (rel, function) not in HAND_WRITTEN_RENAMES_ALLOWED):
            found.append(f"{rel}:{node.lineno} {node.func.value.id}.{node.func.attr}")
        for child in ast.iter_child_nodes(node):
            found += renames(child, rel, function)
        return found

    found = []
    for folder in ("schemas", "transforms", "model", "pipeline", "benchmarks"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(dirpath, name)
                found += renames(ast.parse(open(path, encoding="utf-8").read(), path), os.path.relpath(path, ROOT), "")
    assert not found, "write through folkrnn.schemas.files.atomic_write instead: " + ", ".join(found)


# --- validate: every I/O failure is one line naming the path and the cause ---------------------------
def small_dataset(path: str) -> str:
    return write_dataset(path, range(1, 21), shards=2, findings=False)


def folder_bytes(folder: str) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_validate_json_into_a_file_is_one_line_before_any_work(tmp_path, capsys):
    from folkrnn.pipeline import cli

    data = small_dataset(str(tmp_path / "generated"))
    before = folder_bytes(data)
    (tmp_path / "afile").write_text("x")
    target = str(tmp_path / "afile" / "summary.json")  # its parent is a regular file: ENOTDIR
    assert cli.main(["validate", data, "--json", target, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"folkrnn validate: error: cannot write --json {target}: ")
    assert "is not a folder" in err
    assert folder_bytes(data) == before  # refused before validating and rewriting the shards
    assert cli.main(["validate", data, "--json", str(tmp_path), "--quiet"]) == 2
    assert "is a folder: give a file name" in capsys.readouterr().err


@pytest.mark.skipif(not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
                    reason="needs /dev/full")
def test_validate_json_on_a_full_disk_is_one_line_and_the_device_stays(tmp_path, capsys):
    from folkrnn.pipeline import cli

    data = small_dataset(str(tmp_path / "generated"))
    assert cli.main(["validate", data, "--json", "/dev/full", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == ("folkrnn validate: error: /dev/full: No space left on device "
                   "(free some space or choose another disk)\n")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # written into, never renamed over
    assert not [n for n in os.listdir("/dev") if n.startswith(".full")]


def test_validate_shard_write_failure_names_the_shard_and_the_real_cause(tmp_path):
    """The shard rewrite fails (file too large); the error was hidden behind FileNotFoundError."""
    data = small_dataset(str(tmp_path / "generated"))
    before = folder_bytes(data)
    limit = 1024  # bytes: every rewritten shard is larger
    done = folkrnn("validate", data, "--quiet", max_file_size=limit, timeout=120)
    stderr = done.stderr
    shard = os.path.join(data, "part-00000.parquet")
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last == f"folkrnn validate: error: {shard}: File too large", stderr
    assert folder_bytes(data) == before  # no temporary file left, the shard untouched


# --- generate: a failed or interrupted shard write leaves nothing a reader reads ---------------------
WRITE_SHARD = """
import resource, signal, sys
from folkrnn.model.generate import write_shard
from tests.test_books import generated_table
rows = generated_table(range(41, 61), findings=False).to_pylist()
if sys.argv[2] == "kill":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the default ends the process
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
write_shard(sys.argv[1], rows)
"""


@pytest.mark.parametrize("how", ["kill", "error"])
def test_an_interrupted_generate_shard_is_never_read(tmp_path, how):
    from folkrnn.model.generate import write_shard

    folder = tmp_path / "generated"
    for k, numbers in enumerate((range(1, 21), range(21, 41))):
        write_shard(str(folder / f"part-{k:05d}.parquet"), generated_table(numbers, findings=False).to_pylist())
    done = subprocess.run([sys.executable, "-c", WRITE_SHARD, str(folder / "part-00002.parquet"), how], cwd=ROOT,
                          env=folkrnn_env(), capture_output=True, text=True, timeout=120)
    left = sorted(n for n in os.listdir(folder) if n not in ("part-00000.parquet", "part-00001.parquet"))
    if how == "kill":  # killed mid-write (SIGXFSZ): the temporary file stays, dot-prefixed
        assert done.returncode == -signal.SIGXFSZ, done.stderr
        assert len(left) == 1 and re.fullmatch(r"\.part-00002\.parquet\..+\.tmp", left[0]), left
        assert os.path.getsize(folder / left[0]) == 2000
    else:  # a write error: the real cause raised, the temporary file removed
        assert done.returncode == 1 and "File too large" in done.stderr, done.stderr
        assert left == []
    table = pq.read_table(str(folder))
    assert sorted(table.column("number").to_pylist()) == list(range(1, 41))
    assert ds.dataset(str(folder)).count_rows() == 40
