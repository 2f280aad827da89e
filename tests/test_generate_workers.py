"""Issue 17: local generation in one worker process per core.

The same bytes as one process; a kill -9 of the parent leaves no worker running and the run
resumes to the same bytes; a worker's error or death ends the run with one line. Real processes
throughout (spawned workers, kill -9, a real allocation failure under an address-space limit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from folkrnn.model.checkpoint import save_checkpoint
from tests.conftest import ROOT, folkrnn_command, folkrnn_env, small_model, start_folkrnn
from tests.test_compile_hardening import tree_of

ON_LINUX = sys.platform.startswith("linux")
SHORT_TUNES = 2.0  # </s> logit bias: tunes of a few dozen tokens
# 40 shards: the first is written long before the last, so a run can be stopped in between
RUN = ["--num-tunes", "1000", "--shard-size", "25", "--batch-size", "16", "--max-tokens", "80", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "small.pt")
    model = small_model(1, units=32, end_bias=SHORT_TUNES)
    save_checkpoint(path, model, model.config)
    return path


@pytest.fixture(scope="module")
def one_process(checkpoint, tmp_path_factory) -> dict[str, bytes]:
    """The shards of RUN made by one process (--workers 1, in this process)."""
    from folkrnn.pipeline import cli

    out = str(tmp_path_factory.mktemp("one") / "run")
    assert cli.main(["generate", checkpoint, "--out", out, *RUN, "--workers", "1", "--threads", "1"]) == 0
    return shards(out)


def shards(out: str) -> dict[str, bytes]:
    folder = os.path.join(out, "generated")
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder)) if n.startswith("part-")}


def test_two_workers_write_the_same_bytes_as_one_process(checkpoint, one_process, tmp_path, folkrnn_main):
    out = str(tmp_path / "run")
    result = folkrnn_main("generate", checkpoint, "--out", out, *RUN, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert len(one_process) == 40
    assert shards(out) == one_process


def test_well_formed_tunes_are_the_same_with_two_workers(checkpoint, tmp_path, folkrnn_main):
    """--well-formed: the grammar's state moves with its rows when a worker's batch shrinks."""
    argv = ["--num-tunes", "120", "--shard-size", "30", "--batch-size", "32", "--max-tokens", "120",
            "--well-formed", "--quiet"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert folkrnn_main("generate", checkpoint, "--out", one, *argv, "--workers", "1", "--threads", "1").returncode == 0
    result = folkrnn_main("generate", checkpoint, "--out", two, *argv, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert len(shards(one)) == 4 and shards(two) == shards(one)


def stop_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # only when a test failed: nothing of it may run on
    except (ProcessLookupError, PermissionError):
        pass


def wait_gone(pid: int, marker: str) -> dict:
    deadline = time.monotonic() + 20
    while (left := tree_of(pid, marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.skipif(not ON_LINUX, reason="parent-death signals and /proc are Linux's")
def test_kill_9_of_the_parent_leaves_no_worker_and_the_run_resumes_to_the_same_bytes(
        checkpoint, one_process, tmp_path, folkrnn_main):
    out = str(tmp_path / "run")
    folder = os.path.join(out, "generated")
    run = start_folkrnn("generate", checkpoint, "--out", out, *RUN, "--workers", "2", start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (os.path.isdir(folder) and any(n.startswith("part-") for n in os.listdir(folder))):
            assert run.poll() is None, f"generate ended before its first shard: {run.communicate()}"
            assert time.monotonic() < deadline, "no shard within 120 s"
            time.sleep(0.01)
        os.killpg(run.pid, signal.SIGSTOP)  # the whole run stands still: it cannot finish meanwhile
        tree = tree_of(run.pid, out)
        workers = [pid for pid, p in tree.items() if "spawn_main" in p["cmdline"]]
        assert len(workers) >= 2, f"no two workers: {[(p['comm'], p['cmdline'][:100]) for p in tree.values()]}"
        os.kill(run.pid, signal.SIGKILL)
        os.killpg(run.pid, signal.SIGCONT)
        run.wait(timeout=10)
        left = wait_gone(run.pid, out)
        assert not left, f"left running after kill -9: {[(p['comm'], p['cmdline'][:120]) for p in left.values()]}"
    finally:
        run.stdout.close()
        run.stderr.close()
        stop_group(run.pid)
    kept = shards(out)
    assert 1 <= len(kept) < 40, f"{len(kept)} shards written before the kill"
    stamps = {n: os.path.getmtime(os.path.join(folder, n)) for n in kept}

    again = folkrnn_main("generate", checkpoint, "--out", out, *RUN, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert shards(out) == one_process
    assert all(os.path.getmtime(os.path.join(folder, n)) == stamps[n] for n in kept), "a finished shard was redone"


@pytest.mark.skipif(not ON_LINUX, reason="prlimit is util-linux's")
def test_a_worker_error_is_one_line_and_stops_the_other_workers(checkpoint, tmp_path):
    """A batch too big for memory (a real allocation failure: the address space is capped at 3 GB,
    so nothing is ever touched) fails in the workers, not in the parent."""
    out = str(tmp_path / "run")
    command = ["prlimit", "--as=3000000000", "--", *folkrnn_command(
        "generate", checkpoint, "--out", out, "--num-tunes", "100", "--batch-size", "2000000", "--workers", "2",
        "--quiet")]
    run = subprocess.Popen(command, cwd=ROOT, env=folkrnn_env(), text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = run.communicate(timeout=120)
        assert not wait_gone(run.pid, out)
    finally:
        stop_group(run.pid)
    assert run.returncode == 2
    assert stderr.strip() == ("folkrnn generate: error: not enough memory to sample 2,000,000 tunes of up to 1,000 "
                              "tokens at once in each process: use a smaller --batch-size (or fewer --workers)")


@pytest.mark.skipif(not ON_LINUX, reason="/proc is Linux's")
def test_a_killed_worker_ends_the_run_in_one_line(checkpoint, tmp_path):
    """Killed while the other worker is sending tunes (the run would take minutes to finish)."""
    out = str(tmp_path / "run")
    folder = os.path.join(out, "generated")
    run = start_folkrnn("generate", checkpoint, "--out", out, "--num-tunes", "200000", "--shard-size", "50",
                        "--batch-size", "16", "--workers", "2", "--quiet", start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (os.path.isdir(folder) and any(n.startswith("part-") for n in os.listdir(folder))):
            assert run.poll() is None, f"generate ended before its first shard: {run.communicate()}"
            assert time.monotonic() < deadline, "no shard within 120 s"
            time.sleep(0.02)
        workers = [pid for pid, p in tree_of(run.pid, out).items() if "spawn_main" in p["cmdline"]]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = run.communicate(timeout=60)
        left = wait_gone(run.pid, out)
        assert not left, f"left running: {[(p['comm'], p['cmdline'][:120]) for p in left.values()]}"
    finally:
        stop_group(run.pid)
    assert run.returncode == 2
    line = stderr.strip()
    assert "\n" not in line and line.startswith("folkrnn generate: error: worker "), stderr
    assert "was killed by signal 9 before its tunes were done (out of memory? try a smaller --batch-size or fewer " \
           "--workers); the finished shards are kept: run the same command again to resume" in line


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--workers", "2", "--runner", "DirectRunner"], "--workers is for local runs; on Beam the runner's own flags"),
])
def test_workers_mistakes_are_one_line(checkpoint, tmp_path, flags, message, folkrnn_main):
    result = folkrnn_main("generate", checkpoint, "--out", str(tmp_path / "x"), "--num-tunes", "2", *flags)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- training's default threads (issue 17 part 2) ---------------------------------------------------------
STAT = """cpu  300 0 100 1000 0 0 0 0 0 0
cpu0 100 0 50 500 0 0 0 0 0 0
cpu1 200 0 50 500 0 0 0 0 0 0
intr 12345
"""


def test_cores_in_use_from_proc_stat_and_the_threads_left():
    from folkrnn.model.devices import cores_in_use, cpu_times, threads_beside

    before = cpu_times(STAT)
    assert before == {0: (150, 650), 1: (250, 750)}
    # over the next 100 ticks a core: cpu0 busy 90 of them, cpu1 10 (steal counts as busy)
    after = cpu_times(STAT.replace("cpu0 100 0 50 500", "cpu0 190 0 50 510").replace(
        "cpu1 200 0 50 500 0 0 0 0", "cpu1 200 0 50 590 0 0 0 10"))
    assert cores_in_use(before, after, [0, 1]) == pytest.approx(1.0)
    assert cores_in_use(before, after, [1]) == pytest.approx(0.1)
    assert [threads_beside(others, 2) for others in (0.0, 0.3, 0.6, 1.0, 2.0)] == [2, 2, 1, 1, 1]
    assert threads_beside(1.2, 8) == 7 and threads_beside(0.0, 1) == 1


@pytest.mark.skipif(not ON_LINUX, reason="/proc/stat is Linux's")
def test_a_busy_process_beside_training_leaves_it_fewer_threads():
    from folkrnn.model.devices import default_threads, usable_cpus

    cpus = usable_cpus()
    if len(cpus) < 2:
        pytest.skip("one usable core: one thread whatever the load")
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpus[0]}}})\nwhile 1: pass"])
    try:
        deadline = time.monotonic() + 30
        while int(open(f"/proc/{busy.pid}/stat").read().rsplit(")", 1)[1].split()[11]) < 10:  # utime: it spins
            assert time.monotonic() < deadline, "the busy process never ran"
            time.sleep(0.05)
        threads, others = default_threads(seconds=0.5)
    finally:
        busy.kill()
        busy.wait()
    assert others >= 0.5 and threads <= len(cpus) - 1
